"""Duplicate photos of a folder: each photo through the backbone and towers once, the head on
(candidate) pairs of embeddings, then the duplicate map (imagededup's format) and groups.

File names are kept as ``os.listdir`` gives them (str, undecodable bytes as surrogate escapes),
so nothing is lost; ``errors.printable`` shows them on the console."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from samespace import candidates, photos, reports, scoring
from samespace.baselines import hashes
from samespace.errors import DataError, plural, printable
from samespace.network import SiameseNet
from samespace.photos import Skipped

logger = logging.getLogger("samespace.dedup")

ALL_PAIRS_LIMIT = 500  # search "auto" scores every pair up to this many photos, then k neighbours
MODEL, IDENTICAL = "model", "identical bytes"  # why a pair is a duplicate


@dataclasses.dataclass
class Dedup:
    """Scored pairs of a folder's photos and the duplicates among them."""

    names: list[str]
    first: np.ndarray
    second: np.ndarray
    scores: np.ndarray
    threshold: float
    search: str
    head_evaluations: int
    trunk_images: int = 0
    unreadable: list[Skipped] = dataclasses.field(default_factory=list)
    reasons: np.ndarray | None = None  # per scored pair: MODEL or IDENTICAL

    def __post_init__(self) -> None:
        if self.reasons is None:
            self.reasons = np.full(len(self.scores), MODEL, dtype=object)

    def mark_identical(self, groups: list[list[int]]) -> None:
        """Byte-identical photos are duplicates whatever the model says: their pairs get score
        1.0 and reason IDENTICAL (added when the candidate search did not propose them)."""
        pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
        if not pairs:
            return
        n = len(self.names)
        wanted = np.unique([min(a, b) * n + max(a, b) for a, b in pairs])
        scored = self.first.astype(np.int64) * n + self.second
        hit = np.isin(scored, wanted)
        self.scores = np.where(hit, 1.0, self.scores).astype(self.scores.dtype)
        self.reasons = np.where(hit, IDENTICAL, self.reasons).astype(object)
        extra = wanted[~np.isin(wanted, scored)]
        self.first = np.concatenate([self.first, extra // n]).astype(self.first.dtype)
        self.second = np.concatenate([self.second, extra % n]).astype(self.second.dtype)
        self.scores = np.concatenate([self.scores, np.ones(len(extra), self.scores.dtype)])
        self.reasons = np.concatenate([self.reasons, np.full(len(extra), IDENTICAL, dtype=object)])

    @property
    def duplicate_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = self.is_duplicate
        return self.first[keep], self.second[keep], self.scores[keep]

    @property
    def is_duplicate(self) -> np.ndarray:
        """Per scored pair: at or above the threshold, or byte-identical (even at threshold 1.0)."""
        return (self.scores >= self.threshold) | (self.reasons == IDENTICAL)

    @property
    def duplicate_reasons(self) -> np.ndarray:
        """MODEL or IDENTICAL for each of ``duplicate_pairs``, in the same order."""
        return self.reasons[self.is_duplicate]

    def duplicates(self, with_scores: bool = False) -> dict[str, list]:
        """imagededup's format: every photo mapped to its duplicates (with scores, best first)."""
        found: dict[str, list] = {name: [] for name in self.names}
        for a, b, score in zip(*self.duplicate_pairs):
            found[self.names[a]].append((self.names[b], round(float(score), 6)))
            found[self.names[b]].append((self.names[a], round(float(score), 6)))
        for name, hits in found.items():
            hits.sort(key=lambda hit: -hit[1])
            found[name] = hits if with_scores else [hit[0] for hit in hits]
        return found

    def groups(self) -> list[list[int]]:
        """Connected groups of duplicates (two or more photos), largest first."""
        parent = list(range(len(self.names)))

        def root(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, b, _ in zip(*self.duplicate_pairs):
            parent[root(int(a))] = root(int(b))
        members: dict[int, list[int]] = {}
        for index in range(len(self.names)):
            members.setdefault(root(index), []).append(index)
        return sorted((m for m in members.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def score_embeddings(
    first: torch.Tensor,
    second: torch.Tensor,
    head: torch.nn.Sequential,
    names: list[str],
    *,
    threshold: float = 0.5,
    search: str = "auto",
    neighbours: int = 20,
    index: str = "auto",
) -> Dedup:
    """Score pairs of photos from their tower embeddings: every pair, or each photo's
    ``neighbours`` nearest on the embeddings (candidate search). Both use the same scorer, so a
    pair's score does not depend on how it was found."""
    n = len(names)
    if search == "auto":
        search = "all" if n <= ALL_PAIRS_LIMIT else "knn"
    scorer = scoring.PairScorer(head, first, second)
    if search == "all":
        a, b = scoring.all_upper_pairs(n)
    else:
        table = candidates.nearest_neighbours(candidates.search_vectors(first, second), neighbours, method=index)
        a, b = candidates.candidate_pairs(table)
    return Dedup(list(names), a, b, scorer.probabilities(a, b), threshold, search, scorer.evaluations)


@dataclasses.dataclass
class Listing:
    """What a folder holds: regular files to read, entries left out (and why), and the
    subfolders a non-recursive listing did not enter."""

    files: list[Path]
    skipped: list[Skipped]
    subfolders: list[Path]


def list_files(folder: Path, recursive: bool, exclude: Path | None = None) -> Listing:
    """The regular files of ``folder`` (and its subfolders when ``recursive``), sorted, minus
    ``exclude``. Nothing is opened here: FIFOs, sockets, broken links, links to folders and
    folders that cannot be listed are returned as skipped, never read (a FIFO blocks forever)."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    subfolders: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None

    def unlistable(error: OSError) -> None:
        skipped.append(Skipped(Path(error.filename), f"cannot list this folder: {error.strerror}"))

    for root, dirs, names in os.walk(folder, onerror=unlistable):
        here = Path(root)
        if not recursive:
            subfolders += [here / d for d in sorted(dirs)]
            dirs.clear()
        for d in list(dirs):
            path = here / d
            if path.is_symlink():  # os.walk does not follow them; say so rather than drop them
                skipped.append(Skipped(path, "link to a folder, not followed"))
            elif excluded is not None and path.resolve() == excluded:
                dirs.remove(d)
        for name in names:
            path = here / name
            problem = photos.not_a_regular_file(path)
            if problem:
                skipped.append(Skipped(path, problem))
            elif excluded is None or not path.resolve().is_relative_to(excluded):
                files.append(path)
    return Listing(sorted(files), sorted(skipped, key=lambda s: s.path), subfolders)


def count_files(folders: list[Path]) -> int:
    """Entries in these folders and below (not opened; unreadable folders count as empty)."""
    return sum(len(names) for folder in folders for _, _, names in os.walk(folder))


def identical_files(paths: list[Path]) -> list[list[int]]:
    """Groups (two or more) of positions in ``paths`` whose files have the same SHA-256: sizes
    first, so only files of a shared size are hashed."""
    by_size: dict[int, list[int]] = {}
    for position, path in enumerate(paths):
        try:
            by_size.setdefault(path.stat().st_size, []).append(position)
        except OSError:  # gone since it was read: it simply joins no group
            continue
    by_digest: dict[str, list[int]] = {}
    for group in (g for g in by_size.values() if len(g) > 1):
        for position in group:
            try:
                with photos.open_regular(paths[position]) as handle:  # a FIFO swapped in: no group
                    by_digest.setdefault(hashlib.file_digest(handle, "sha256").hexdigest(), []).append(position)
            except OSError:
                continue
    return [g for g in by_digest.values() if len(g) > 1]


def log_skipped(skipped: list[Skipped], folder: Path, shown: int = 10) -> None:
    """One line per skipped entry (the first ``shown``), names printable on any console."""
    for entry in skipped[:shown]:
        name = entry.path.relative_to(folder).as_posix() if entry.path.is_relative_to(folder) else str(entry.path)
        logger.warning("skipped %s: %s", printable(name), entry.reason)
    if len(skipped) > shown:
        logger.warning("skipped %d more files (all listed in the report)", len(skipped) - shown)


def require_photos_here(kept: list[int], listing: Listing, folder: Path) -> None:
    """No photo read, but the subfolders a non-recursive listing left out hold files: say so."""
    if not kept and listing.subfolders:
        nested = count_files(listing.subfolders)
        if nested:
            raise DataError(
                f"no photos directly in {printable(str(folder))}, but its subfolders hold {plural(nested, 'file')}: "
                "pass --recursive to include them"
            )


def find_hash_duplicates(
    folder: Path,
    method: str,
    *,
    max_distance: int = hashes.DEFAULT_DISTANCE,
    recursive: bool = False,
    exclude: Path | None = None,
) -> Dedup:
    """Duplicate photos by imagededup's ``method`` hash instead of the network: every pair within
    ``max_distance`` bits (brute force, as imagededup), and byte-identical files always. A pair's
    score is ``1 - distance / 64`` (1.0 = equal hashes), so the threshold is ``1 - max_distance / 64``;
    only the pairs within it are kept (all pairs of a large folder would not fit in memory)."""
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    listing = list_files(folder, recursive, exclude)
    found, kept, unreadable = hashes.file_hashes(listing.files, method)
    skipped = sorted(listing.skipped + unreadable, key=lambda s: s.path)
    log_skipped(skipped, folder)
    require_photos_here(kept, listing, folder)
    paths = [listing.files[i] for i in kept]
    names = [path.relative_to(folder).as_posix() for path in paths]
    a, b, distances = hashes.close_pairs(hashes.as_integers(found), max_distance)
    threshold = float(hashes.similarity(max_distance))
    result = Dedup(names, a, b, hashes.similarity(distances), threshold, f"{method} <= {max_distance} bits", 0)
    result.mark_identical(identical_files(paths))
    result.unreadable = skipped
    return result


def find_duplicates(
    net: SiameseNet,
    folder: Path,
    device: torch.device,
    *,
    threshold: float = 0.5,
    recursive: bool = False,
    search: str = "auto",
    neighbours: int = 20,
    index: str = "auto",
    exclude: Path | None = None,
    engine_name: str = "torch",
) -> Dedup:
    """Duplicate photos in ``folder``: pairs the model scores at or above ``threshold``, and
    byte-identical files always (score 1.0, reason ``identical bytes``). Unreadable files and
    entries that are not regular files are listed, not fatal."""
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    listing = list_files(folder, recursive, exclude)
    # bfloat16 trunk on CUDA, where it scores alike; engine_name: onnxruntime on the CPU (engine.py)
    embedder = scoring.Embedder(net, device, autocast=True, engine_name=engine_name)
    trunk_features, kept, unreadable = scoring.features_of_files(embedder, listing.files)
    skipped = sorted(listing.skipped + unreadable, key=lambda s: s.path)
    log_skipped(skipped, folder)
    require_photos_here(kept, listing, folder)
    paths = [listing.files[i] for i in kept]
    names = [path.relative_to(folder).as_posix() for path in paths]
    first, second = embedder.embed(trunk_features)
    result = score_embeddings(
        first, second, net.head, names, threshold=threshold, search=search, neighbours=neighbours, index=index
    )
    result.mark_identical(identical_files(paths))
    result.trunk_images, result.unreadable = embedder.trunk_images, skipped
    return result


def write_outputs(result: Dedup, folder: Path, output: Path, with_scores: bool, checkpoint: str | None = None) -> dict:
    """``duplicates.json``, ``pairs.csv``, ``report.html`` and ``summary.json`` in ``output``, each
    written whole or not at all; returns the summary. ``checkpoint`` names the model in the reports."""
    reports.prepare_output(output, force=True)  # the caller checked it before the work
    groups = result.groups()
    pair_scores = {(int(a), int(b)): float(s) for a, b, s in zip(*result.duplicate_pairs)}
    summary = {
        **({"checkpoint": checkpoint} if checkpoint else {}),
        "photos": len(result.names),
        "groups": len(groups),
        "photos in groups": sum(len(members) for members in groups),
        "duplicate pairs": len(pair_scores),
        "skipped files": len(result.unreadable),
        "threshold": round(float(result.threshold), 4),
        "search": result.search,
        "scored pairs": int(len(result.scores)),
        "head evaluations": result.head_evaluations,
    }
    reports.write_json(output / "duplicates.json", result.duplicates(with_scores))
    reports.write_pairs_csv(output / "pairs.csv", result.names, result.first, result.second, result.scores)
    reports.write_dedup_html(
        output / "report.html", folder, result.names, groups, pair_scores, result.unreadable, summary
    )
    reports.write_json(
        output / "summary.json", {**summary, "skipped": [f"{s.path}: {s.reason}" for s in result.unreadable]}
    )
    return summary
