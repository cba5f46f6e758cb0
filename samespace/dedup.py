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
from typing import Any, Callable, Iterator

import numpy as np
import torch

from samespace import candidates, photos, reports, scoring
from samespace import groups as groups_module
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
    engine: str | None = None  # what ran the trunk (``engine.label``); None: no model (a hash method)
    unreadable: list[Skipped] = dataclasses.field(default_factory=list)
    reasons: np.ndarray | None = None  # per scored pair: MODEL or IDENTICAL
    identical: list[list[int]] = dataclasses.field(default_factory=list)  # byte-identical groups
    ranks: np.ndarray | None = None  # per photo, its rank to be kept (0 first); None: name order
    facts: dict[int, groups_module.PhotoFacts] = dataclasses.field(default_factory=dict)  # photos in duplicates
    # the k-nearest table of the scored photos (``knn`` search, when asked: ``keep_table``), so that
    # ``catalogue.save`` keeps their similarities without a second search
    neighbour_table: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.reasons is None:
            self.reasons = np.full(len(self.scores), MODEL, dtype=object)

    def mark_identical(self, groups: list[list[int]]) -> None:
        """Byte-identical photos are duplicates whatever the model says. Their groups are kept
        as groups (O(copies), never expanded into pairs); a pair of them that was scored anyway
        gets score 1.0 and reason IDENTICAL."""
        self.identical = [list(group) for group in groups if len(group) > 1]
        unit = groups_module.units_of(len(self.names), self.identical)
        hit = (unit[self.first] >= 0) & (unit[self.first] == unit[self.second])
        self.scores = np.where(hit, 1.0, self.scores).astype(self.scores.dtype)
        self.reasons = np.where(hit, IDENTICAL, self.reasons).astype(object)

    def identical_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Each identical group as a star: its first file against each of its other copies."""
        first = [group[0] for group in self.identical for _ in group[1:]]
        second = [member for group in self.identical for member in group[1:]]
        return np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)

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
        """imagededup's format: every photo mapped to its duplicates (with scores, best first).
        An identical group is listed as a star (its first file and each copy), so the map grows
        with the number of copies, not with its square."""
        return dict(self.duplicate_items(with_scores))

    def duplicate_items(self, with_scores: bool = False) -> Iterator[tuple[str, list]]:
        """``duplicates()`` one photo at a time, in name order, so that no per-pair object of
        the whole map is ever held: the pairs are sorted by photo (and by their order) once."""
        model = self.duplicate_reasons == MODEL
        a, b, s = (column[model] for column in self.duplicate_pairs)
        same_a, same_b = self.identical_pairs()
        a, b = np.concatenate([a, same_a]).astype(np.int64), np.concatenate([b, same_b]).astype(np.int64)
        s = np.concatenate([s, np.ones(len(same_a))])
        pair = np.arange(len(a))  # each pair is listed under both photos, in pair order
        photo, partner, pair = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([pair, pair])
        order = np.lexsort((pair, photo))
        photo, partner, pair = photo[order], partner[order], pair[order]
        bounds = np.searchsorted(photo, np.arange(len(self.names) + 1))
        for index, name in enumerate(self.names):
            rows = range(bounds[index], bounds[index + 1])
            hits = [(self.names[partner[r]], round(float(s[pair[r]]), 6)) for r in rows]
            hits.sort(key=lambda hit: -hit[1])
            yield name, hits if with_scores else [hit[0] for hit in hits]

    def groups(self) -> list[list[int]]:
        """Duplicate groups (two or more photos), largest first, each a star: the kept photo
        first (lowest ``ranks``), then photos that are duplicates of that photo itself."""
        ranks = self.ranks if self.ranks is not None else np.arange(len(self.names))
        a, b, _ = self.duplicate_pairs
        return groups_module.star_groups(len(self.names), a, b, self.identical, ranks)


def find_candidates(
    first: torch.Tensor, second: torch.Tensor, *, search: str = "auto", neighbours: int = 20, index: str = "auto"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Stage 2: the pairs (a < b) to score, and the search that found them: every pair up to
    ``ALL_PAIRS_LIMIT`` photos (``auto``), else each photo's ``neighbours`` nearest."""
    a, b, search, _ = candidates_and_table(first, second, search=search, neighbours=neighbours, index=index)
    return a, b, search


def candidates_and_table(
    first: torch.Tensor, second: torch.Tensor, *, search: str = "auto", neighbours: int = 20, index: str = "auto"
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """``find_candidates`` with the k-nearest table it searched (None for ``all``)."""
    n = len(first)
    if search == "auto":
        search = "all" if n <= ALL_PAIRS_LIMIT else "knn"
    if search == "all":
        return *scoring.all_upper_pairs(n), search, None
    table = candidates.tower_neighbours(first, second, neighbours, method=index)
    return *candidates.candidate_pairs(table), search, table


def score_pairs(
    head: torch.nn.Sequential, first: torch.Tensor, second: torch.Tensor, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, int]:
    """Stage 3: the head's P(same space) of each pair, and the head evaluations it took."""
    scorer = scoring.PairScorer(head, first, second)
    return scorer.probabilities(a, b), scorer.evaluations


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
    a, b, search = find_candidates(first, second, search=search, neighbours=neighbours, index=index)
    scores, evaluations = score_pairs(head, first, second, a, b)
    return Dedup(list(names), a, b, scores, threshold, search, evaluations)


@dataclasses.dataclass
class Listing:
    """What a folder holds: regular files to read, entries left out (and why), and the
    subfolders a non-recursive listing did not enter."""

    files: list[Path]
    skipped: list[Skipped]
    subfolders: list[Path]


def list_files(folder: Path, recursive: bool, exclude: Path | None = None, include_hidden: bool = False) -> Listing:
    """The regular files of ``folder`` (and its subfolders when ``recursive``), sorted, minus
    ``exclude`` and, unless ``include_hidden``, hidden subfolders (``.name``: caches such as the
    ``.samespace-cache`` that evaluate writes hold no photos of the user's).
    Nothing is opened here: FIFOs, sockets, broken links, links to folders and folders that cannot
    be listed are returned as skipped, never read (a FIFO blocks forever)."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    subfolders: list[Path] = []
    excluded = exclude.resolve() if exclude is not None else None

    def unlistable(error: OSError) -> None:
        skipped.append(Skipped(Path(error.filename), f"cannot list this folder: {error.strerror}"))

    for root, dirs, names in os.walk(folder, onerror=unlistable):
        here = Path(root)
        if not include_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
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


@dataclasses.dataclass
class Copies:
    """A listing's byte-identical copies collapsed: only ``scored`` (positions in the listing:
    every file but the second and later copies) is decoded, hashed or scored, so a group of k
    copies costs one photo's work and k entries (O(copies), never k² pairs)."""

    identical: list[list[int]]
    scored: list[int]
    copies_of: dict[int, list[int]]

    @classmethod
    def of(cls, files: list[Path]) -> Copies:
        identical = identical_files(files)
        return cls(identical, groups_module.representatives(len(files), identical), {g[0]: g[1:] for g in identical})

    def expand(
        self, files: list[Path], decoded: list[int], unreadable: list[Skipped]
    ) -> tuple[list[int], list[int], list[Skipped]]:
        """From the positions in ``scored`` that decoded: the representatives kept, every photo kept
        (with their copies, listing order), and ``unreadable`` plus the copies of the lost ones."""
        lost = set(self.scored) - {self.scored[i] for i in decoded}
        reason_of = {entry.path: entry.reason for entry in unreadable}
        unreadable = unreadable + [  # a copy of an unreadable file is unreadable for the same reason
            Skipped(files[c], reason_of.get(files[position], "unreadable"))
            for position in sorted(lost)
            for c in self.copies_of.get(position, [])
        ]
        kept_reps = [self.scored[i] for i in decoded]
        kept = sorted(kept_reps + [c for r in kept_reps for c in self.copies_of.get(r, [])])
        return kept_reps, kept, unreadable

    def groups_among(self, kept_reps: list[int], index_of: dict[int, int]) -> list[list[int]]:
        """The identical groups of the kept representatives, renumbered among the kept photos."""
        return [[index_of[r]] + [index_of[c] for c in self.copies_of[r]] for r in kept_reps if r in self.copies_of]


@dataclasses.dataclass
class Kept:
    """A listing read one photo per set of byte-identical copies: what the reader gave for the
    representatives that read, and the photos kept (those representatives and their copies)."""

    read: Any  # the reader's result for ``reps``, in their order (trunk features, hashes)
    copies: Copies
    reps: list[int]  # listing positions of the representatives that read
    paths: list[Path]  # every photo kept, listing order
    index_of: dict[int, int]  # listing position -> position among ``paths``
    skipped: list[Skipped]  # the listing's skipped entries and the unreadable files, sorted


def read_representatives(
    folder: Path, listing: Listing, read: Callable[[list[Path]], tuple[Any, list[int], list[Skipped]]]
) -> Kept:
    """Collapse the listing's byte-identical copies, ``read`` one file of each set (returning its
    result, the positions that read, the unreadable), and keep the rest's copies; skipped files are
    logged, and a folder with no photo read is one clear error."""
    copies = Copies.of(listing.files)
    result, decoded, unreadable = read([listing.files[i] for i in copies.scored])
    reps, kept, unreadable = copies.expand(listing.files, decoded, unreadable)
    skipped = sorted(listing.skipped + unreadable, key=lambda s: s.path)
    log_skipped(skipped, folder)
    require_photos_here(reps, listing, folder, skipped)
    index_of = {position: k for k, position in enumerate(kept)}
    return Kept(result, copies, reps, [listing.files[i] for i in kept], index_of, skipped)


def log_skipped(skipped: list[Skipped], folder: Path, shown: int = 10) -> None:
    """One line per skipped entry (the first ``shown``), names printable on any console."""
    for entry in skipped[:shown]:
        name = entry.path.relative_to(folder).as_posix() if entry.path.is_relative_to(folder) else str(entry.path)
        logger.warning("skipped %s: %s", printable(name), entry.reason)
    if len(skipped) > shown:
        logger.warning("skipped %d more files (all listed in the report)", len(skipped) - shown)


def require_photos_here(kept: list[int], listing: Listing, folder: Path, skipped: list[Skipped]) -> None:
    """No photo read: say whether the subfolders a non-recursive listing left out hold files, or
    that the folder has no photos at all (never a report saying 'no duplicates')."""
    if kept:
        return
    if listing.subfolders:
        nested = count_files(listing.subfolders)
        if nested:
            raise DataError(
                f"no photos directly in {printable(str(folder))}, but its subfolders hold {plural(nested, 'file')}: "
                "pass --recursive to include them"
            )
    unread = f" ({plural(len(skipped), 'file')} skipped, see above)" if skipped else ""
    raise DataError(f"no photos found in {printable(str(folder))}{unread}: nothing to compare")


def rank_for_keeping(result: Dedup, paths: list[Path], keep: str) -> None:
    """Facts (resolution, size, date) of the photos in duplicates, and the rank each is kept by."""
    a, b, _ = result.duplicate_pairs  # facts of photos in duplicates only: a header and a stat each
    involved = set(a.tolist()) | set(b.tolist()) | {m for group in result.identical for m in group}
    result.facts = {m: groups_module.facts_of(paths[m]) for m in sorted(involved)}
    result.ranks = groups_module.keep_ranks(result.facts, len(paths), keep)


def find_hash_duplicates(
    folder: Path,
    method: str,
    *,
    max_distance: int = hashes.DEFAULT_DISTANCE,
    recursive: bool = False,
    exclude: Path | None = None,
    keep: str = "largest",
    include_hidden: bool = False,
) -> Dedup:
    """Duplicate photos by imagededup's ``method`` hash instead of the network: every pair within
    ``max_distance`` bits (brute force, as imagededup), and byte-identical files always. A pair's
    score is ``1 - distance / 64`` (1.0 = equal hashes), so the threshold is ``1 - max_distance / 64``;
    only the pairs within it are kept (all pairs of a large folder would not fit in memory)."""
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    listing = list_files(folder, recursive, exclude, include_hidden)
    # as samespace dedup: each group of copies hashed once
    kept = read_representatives(folder, listing, lambda files: hashes.file_hashes(files, method))
    names = [path.relative_to(folder).as_posix() for path in kept.paths]
    a, b, distances = hashes.close_pairs(hashes.as_integers(kept.read), max_distance)  # among representatives
    rep_index = np.array([kept.index_of[r] for r in kept.reps], dtype=np.int64)
    threshold, search = float(hashes.similarity(max_distance)), f"{method} <= {max_distance} bits"
    result = Dedup(names, rep_index[a], rep_index[b], hashes.similarity(distances), threshold, search, 0)
    result.mark_identical(kept.copies.groups_among(kept.reps, kept.index_of))
    result.unreadable = kept.skipped
    rank_for_keeping(result, kept.paths, keep)
    return result


@dataclasses.dataclass
class Embedded:
    """Stage 1's result: a folder's photos and both towers' embeddings of one photo per set of
    byte-identical copies (the local run and the cluster job build it alike)."""

    folder: Path
    paths: list[Path]  # the photos kept (decoded, or byte copies of decoded ones), sorted
    names: list[str]  # their names relative to ``folder``
    scored: list[int]  # positions in ``paths`` of the photos embedded, one per set of copies
    copies: dict[int, list[int]]  # an embedded photo's position -> its byte-identical copies' positions
    first: torch.Tensor  # (len(scored), 1280) first tower's embeddings, in ``scored`` order
    second: torch.Tensor
    skipped: list[Skipped]
    trunk_images: int = 0
    engine: str | None = None  # what ran the trunk (``engine.label``)

    @property
    def identical(self) -> list[list[int]]:
        """Byte-identical groups as positions in ``paths``, the embedded photo first."""
        return [[position] + self.copies[position] for position in self.scored if position in self.copies]


def embed_photos(
    net: SiameseNet,
    folder: Path,
    device: torch.device,
    *,
    recursive: bool = False,
    exclude: Path | None = None,
    include_hidden: bool = False,
    engine_name: str = "torch",
) -> Embedded:
    """Stage 1: list ``folder``, set byte-identical copies aside, decode and embed the rest.
    Unreadable files and entries that are not regular files are listed, not fatal."""
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    listing = list_files(folder, recursive, exclude, include_hidden)
    # bfloat16 trunk on CUDA, where it scores alike; engine_name: onnxruntime on the CPU (engine.py)
    embedder = scoring.Embedder(net, device, autocast=True, engine_name=engine_name)
    # Byte-identical copies first: only one of each group is decoded and scored (O(copies)).
    # each chunk's trunk features go through the towers at once, so only embeddings stay
    kept = read_representatives(folder, listing, lambda files: scoring.features_of_files(embedder, files, towers=True))
    first, second = kept.read
    index_of, copies_of = kept.index_of, kept.copies.copies_of
    return Embedded(
        folder,
        kept.paths,
        [path.relative_to(folder).as_posix() for path in kept.paths],
        [index_of[r] for r in kept.reps],
        {index_of[r]: [index_of[c] for c in copies_of[r]] for r in kept.reps if r in copies_of},
        first,
        second,
        kept.skipped,
        embedder.trunk_images,
        embedder.engine,
    )


def group_pairs(
    embedded: Embedded,
    a: np.ndarray,
    b: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float,
    search: str,
    head_evaluations: int,
    keep: str = "largest",
) -> Dedup:
    """Stage 4: pairs of embedded photos (numbered in ``embedded.scored`` order) renumbered among
    all photos, byte-identical copies marked, and each photo's rank to be kept."""
    rep_index = np.array(embedded.scored, dtype=np.int64)
    result = Dedup(list(embedded.names), rep_index[a], rep_index[b], scores, threshold, search, head_evaluations)
    result.mark_identical(embedded.identical)
    result.trunk_images, result.unreadable = embedded.trunk_images, embedded.skipped
    result.engine = embedded.engine
    rank_for_keeping(result, embedded.paths, keep)
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
    keep: str = "largest",
    include_hidden: bool = False,
    engine_name: str = "torch",
) -> Dedup:
    """Duplicate photos in ``folder``: pairs the model scores at or above ``threshold``, and
    byte-identical files always (score 1.0, reason ``identical bytes``). Unreadable files and
    entries that are not regular files are listed, not fatal. The stages in order:
    ``embed_photos``, ``find_candidates``, ``score_pairs``, ``group_pairs`` (then ``write_outputs``)."""
    embedded = embed_photos(
        net,
        folder,
        device,
        recursive=recursive,
        exclude=exclude,
        include_hidden=include_hidden,
        engine_name=engine_name,
    )
    return dedup_embedded(
        embedded, net.head, threshold=threshold, search=search, neighbours=neighbours, index=index, keep=keep
    )


def dedup_embedded(
    embedded: Embedded,
    head: torch.nn.Sequential,
    *,
    threshold: float = 0.5,
    search: str = "auto",
    neighbours: int = 20,
    index: str = "auto",
    keep: str = "largest",
    keep_table: bool = False,
) -> Dedup:
    """Stages 2-4 on embedded photos: candidates, their head scores, the groups. ``keep_table``
    keeps the k-nearest table in the result (``neighbour_table``: 8 bytes a neighbour a photo)."""
    first, second = embedded.first, embedded.second
    a, b, search, table = candidates_and_table(first, second, search=search, neighbours=neighbours, index=index)
    table = table if keep_table else None  # else not held through scoring
    scores, evaluations = score_pairs(head, first, second, a, b)
    result = group_pairs(
        embedded, a, b, scores, threshold=threshold, search=search, head_evaluations=evaluations, keep=keep
    )
    result.neighbour_table = table
    return result


def report_pairs(result: Dedup) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], set[tuple[int, int]]]:
    """The pairs a report shows, as arrays (first, second, score): model duplicates with their
    scores, and each identical group as a star (first file, copy, 1.0), with the set of those
    identical pairs to label them apart."""
    model = result.duplicate_reasons == MODEL
    a, b, s = (c[model] for c in result.duplicate_pairs)
    same_a, same_b = result.identical_pairs()
    identical = set(zip(same_a.tolist(), same_b.tolist()))
    pairs = np.concatenate([a, same_a]), np.concatenate([b, same_b]), np.concatenate([s, np.ones(len(same_a))])
    return pairs, identical


def decision_aids(result: Dedup, identical: set[tuple[int, int]]) -> dict:
    """What the report shows to help decide: each photo's best match, and the model-scored pairs
    closest to the threshold (byte-identical pairs need no look)."""
    model = result.reasons == MODEL
    return {
        "best_matches": groups_module.best_matches(result.first, result.second, result.scores, sorted(identical)),
        "borderline": groups_module.closest_to_threshold(
            result.first[model], result.second[model], result.scores[model], result.threshold, reports.BORDERLINE_PAIRS
        ),
        "threshold": float(result.threshold),
    }


def write_outputs(
    result: Dedup,
    folder: Path,
    output: Path,
    with_scores: bool,
    checkpoint: str | None = None,
    warnings: list[str] | None = None,
    keep: str = "largest",
    threshold_source: str | None = None,
) -> dict:
    """``duplicates.json``, ``to_remove.json``, ``pairs.csv``, ``report.html`` and ``summary.json``
    in ``output``, each written whole or not at all; returns the summary. ``checkpoint`` names the
    model in the reports; ``warnings`` (about the checkpoint) go into the summary and a banner."""
    groups = result.groups()
    pair_scores, identical = report_pairs(result)
    removable = groups_module.to_remove(groups, result.names)
    summary = {
        **({"checkpoint": checkpoint} if checkpoint else {}),
        "photos": len(result.names),
        "groups": len(groups),
        "photos in groups": sum(len(members) for members in groups),
        "duplicate pairs": len(pair_scores[0]),
        "skipped files": len(result.unreadable),
        "threshold": round(float(result.threshold), 4),
        **({"threshold from": threshold_source} if threshold_source else {}),
        "search": result.search,
        **({"engine": result.engine} if result.engine else {}),
        "scored pairs": int(len(result.scores)),
        "head evaluations": result.head_evaluations,
        "identical copies": sum(len(group) - 1 for group in result.identical),
        "to remove": len(removable),
        "kept by": keep,
    }
    reports.prepare_output(output, force=True, create=False)  # the caller checked it before the work
    with reports.output_set(output) as new:  # replaced as a set, or not at all
        reports.write_json_items(new / "duplicates.json", result.duplicate_items(with_scores))
        reports.write_json(new / "to_remove.json", removable)
        reports.write_pairs_csv(
            new / "pairs.csv", result.names, result.first, result.second, result.scores, result.identical
        )
        reports.write_dedup_html(
            new / "report.html",
            folder,
            result.names,
            groups,
            pair_scores,
            result.unreadable,
            summary,
            identical=identical,
            warnings=warnings or [],
            details=groups_module.describe(result.facts),
            **decision_aids(result, identical),
        )
        reports.write_json(
            new / "summary.json",
            {
                **summary,
                "warnings": list(warnings or []),
                "skipped": [f"{s.path}: {s.reason}" for s in result.unreadable],
            },
        )
    return summary
