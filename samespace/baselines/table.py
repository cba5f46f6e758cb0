"""Baseline rows beside SameSpace's on the same Test Data pairs (every distinct pair, natural
prevalence): ROC-AUC and PR-AUC, and P/R/F1 at the method's own fixed default (for a hash,
imagededup's <= 10 bits), never at a threshold chosen on Test Data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from samespace import metrics, scoring
from samespace.baselines import hashes
from samespace.errors import DataError

NAMES = hashes.METHODS  # the baselines built so far


def parse_names(text: str) -> list[str]:
    """``phash,dhash`` (or ``all``) as a list of baseline names; unknown names in one line."""
    names = list(NAMES) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise DataError(f"unknown baseline {', '.join(unknown) or repr(text)}: choose from {', '.join(NAMES)} or all")
    return list(dict.fromkeys(names))


def hash_row(paths: Sequence[Path], rooms: np.ndarray, method: str) -> dict:
    """One hash's figures on every distinct pair of ``paths`` (same room = duplicate)."""
    start = time.perf_counter()
    found, kept, skipped = hashes.file_hashes(list(paths), method)
    seconds = time.perf_counter() - start
    row: dict = {"trained_on": "nothing (fixed hash)", "photos_per_s": round(len(paths) / max(seconds, 1e-9), 1)}
    if skipped:  # every split photo decoded once already; say so rather than score fewer pairs
        return row | {"roc_auc": None, "pr_auc": None, "why_null": f"{skipped[0].path.name}: {skipped[0].reason}"}
    a, b = scoring.all_upper_pairs(len(paths))
    labels = (rooms[a] == rooms[b]).astype(np.int64)
    scores = hashes.similarity(hashes.hamming(hashes.as_integers(found), a, b))
    report = metrics.score_report(labels, scores)
    row |= {key: report.get(key) for key in ("pairs", "positives", "roc_auc", "pr_auc")}
    if "why_null" in report:
        row["why_null"] = report["why_null"]
    default = float(hashes.similarity(hashes.DEFAULT_DISTANCE))
    row[f"at_default_{hashes.DEFAULT_DISTANCE}_bits"] = metrics.threshold_metrics(labels, scores, default)
    return row


def methods_block(paths: Sequence[Path], rooms: np.ndarray, names: Sequence[str]) -> dict:
    """``evaluation.json``'s ``methods``: one row per baseline, in the order asked."""
    return {name: hash_row(paths, rooms, name) for name in names}


def table_lines(samespace: dict, block: dict) -> list[str]:
    """The printed table: SameSpace's row (its all-distinct-pairs report), then each baseline's."""

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"{'method':<10} {'ROC-AUC':>8} {'PR-AUC':>8}  on every distinct Test Data pair"]
    lines.append(f"{'samespace':<10} {cell(samespace.get('roc_auc')):>8} {cell(samespace.get('pr_auc')):>8}")
    for name, row in block.items():
        note = f"  ({row['why_null']})" if "why_null" in row else f"  {row['photos_per_s']:g} photos/s"
        lines.append(f"{name:<10} {cell(row.get('roc_auc')):>8} {cell(row.get('pr_auc')):>8}{note}")
    return lines
