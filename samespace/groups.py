"""Duplicate groups a user can act on: byte-identical copies collapsed to one representative
before scoring, and each group a star around the photo to keep.

Both cost O(photos + duplicate pairs): a group of k identical copies is k entries, never its
k(k-1)/2 pairs. A star, unlike connected components, never chains: every removed photo is a
duplicate of its group's kept photo itself (scored at or above the threshold, or byte-identical)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from samespace import photos

KEEP_RULES = ("largest", "newest", "oldest", "first")  # "largest": resolution, then file size, then name


@dataclasses.dataclass(frozen=True)
class PhotoFacts:
    """What a user weighs when choosing the file to keep."""

    width: int
    height: int
    bytes: int
    mtime: float


def facts_of(path: Path) -> PhotoFacts:
    """Resolution from the image header only (nothing decoded), size and date from ``stat``;
    zeros for what cannot be read, so such a file is simply kept last."""
    width = height = 0
    if photos.not_a_regular_file(path) is None:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass
    try:
        status = os.stat(path)
        return PhotoFacts(width, height, status.st_size, status.st_mtime)
    except OSError:
        return PhotoFacts(width, height, 0, 0.0)


def keep_ranks(facts: dict[int, PhotoFacts], count: int, rule: str = "largest") -> np.ndarray:
    """Per photo (positions in name order), its rank to be kept (0 first) under ``rule``; photos
    without facts, and ties, go by name (position)."""
    if rule not in KEEP_RULES:
        raise ValueError(f"unknown keep rule {rule!r}: one of {', '.join(KEEP_RULES)}")

    def key(position: int) -> tuple:
        fact = facts.get(position)
        if fact is None or rule == "first":
            return (position,)
        if rule == "largest":
            return (-fact.width * fact.height, -fact.bytes, position)
        return (-fact.mtime if rule == "newest" else fact.mtime, position)

    ranks = np.empty(count, dtype=np.int64)
    ranks[sorted(range(count), key=key)] = np.arange(count)
    return ranks


def representatives(count: int, identical: Sequence[Sequence[int]]) -> list[int]:
    """The positions to decode and score: every file except the second and later copies of an
    identical group (a copy scores exactly as its representative, the group's first)."""
    copies = {member for group in identical for member in group[1:]}
    return [position for position in range(count) if position not in copies]


def units_of(count: int, identical: Sequence[Sequence[int]]) -> np.ndarray:
    """Per photo, the index of its identical group, or -1 when it has no copy."""
    unit = np.full(count, -1, dtype=np.int64)
    for number, group in enumerate(identical):
        unit[list(group)] = number
    return unit


def star_groups(
    count: int,
    first: np.ndarray,
    second: np.ndarray,
    identical: Sequence[Sequence[int]],
    ranks: np.ndarray,
) -> list[list[int]]:
    """Groups as stars: kept photo first, then its identical copies, then the photos (with their
    copies) of each duplicate pair (``first``, ``second``) it takes part in. Photos are taken in
    ``ranks`` order; each not yet grouped keeps the not yet grouped photos it is a duplicate of.
    Identical copies travel together, so a group never splits them. Largest groups first."""
    unit = units_of(count, identical)
    # Work on "units": an identical group, or a photo on its own (numbered after the groups).
    ids = np.where(unit >= 0, unit, len(identical) + np.arange(count))
    members: dict[int, list[int]] = {}
    for position in np.argsort(ranks, kind="stable"):  # members best first, so members[0] is kept
        members.setdefault(int(ids[position]), []).append(int(position))
    neighbours: dict[int, set[int]] = {}
    for a, b in zip(ids[first].tolist(), ids[second].tolist()):
        if a != b:
            neighbours.setdefault(a, set()).add(b)
            neighbours.setdefault(b, set()).add(a)
    taken: set[int] = set()
    stars: list[list[int]] = []
    for kept in sorted(members, key=lambda u: ranks[members[u][0]]):
        if kept in taken:
            continue
        taken.add(kept)
        joined = sorted((u for u in neighbours.get(kept, ()) if u not in taken), key=lambda u: ranks[members[u][0]])
        taken.update(joined)
        star = members[kept] + [m for u in joined for m in members[u]]
        if len(star) > 1:
            stars.append(star)
    return sorted(stars, key=lambda star: (-len(star), ranks[star[0]]))


def describe(facts: dict[int, PhotoFacts]) -> dict[int, str]:
    """Per photo, what the report shows under it: resolution, file size and date."""

    def line(fact: PhotoFacts) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(fact.mtime))
        return f"{fact.width}×{fact.height} · {fact.bytes / 1e3:,.0f} KB · {when}"

    return {member: line(fact) for member, fact in facts.items()}


def to_remove(groups: Sequence[Sequence[int]], names: Sequence[str]) -> list[str]:
    """imagededup's ``find_duplicates_to_remove`` format: the files a user may delete (all but the
    kept first of each group), sorted. The tool itself never deletes anything."""
    return sorted(names[m] for group in groups for m in group[1:])


def best_matches(
    first: np.ndarray, second: np.ndarray, scores: np.ndarray, identical: Sequence[tuple[int, int]] = ()
) -> dict[int, tuple[int, float]]:
    """Per photo, its best-scoring partner among the scored pairs and its score (an identical
    copy's best match is its copy, score 1.0): what the report shows under each photo."""
    same = np.array(list(identical), dtype=np.int64).reshape(-1, 2)
    a = np.concatenate([first, second, same[:, 0], same[:, 1]]).astype(np.int64)
    b = np.concatenate([second, first, same[:, 1], same[:, 0]]).astype(np.int64)
    s = np.concatenate([scores, scores, np.ones(2 * len(same))]).astype(np.float64)
    order = np.lexsort((-s, a))  # by photo, best score first
    leads = order[np.r_[True, a[order][1:] != a[order][:-1]]] if len(order) else order
    return {int(a[i]): (int(b[i]), float(s[i])) for i in leads}


def closest_to_threshold(
    first: np.ndarray, second: np.ndarray, scores: np.ndarray, threshold: float, count: int
) -> list[tuple[float, int, int]]:
    """The ``count`` scored pairs nearest the threshold, on either side, nearest first: the
    decisions a small change of threshold would flip, the ones worth a look."""
    distance = np.abs(np.asarray(scores, dtype=np.float64) - threshold)
    if len(distance) > count:  # O(pairs), not a sort of every scored pair
        candidates = np.argpartition(distance, count)[:count]
        nearest = candidates[np.lexsort((candidates, distance[candidates]))]
    else:
        nearest = np.lexsort((np.arange(len(distance)), distance))
    return [(float(scores[i]), int(first[i]), int(second[i])) for i in nearest]
