"""A kept catalogue: photos embedded once, then new photos checked against them.

``dedup FOLDER --save-catalogue DIR`` keeps, per photo, its manifest row (path, size, mtime,
SHA-256) and both towers' float32 embeddings, with the identity of the network that made them
(SHA-256 of all its weights) and its preprocessing. ``dedup NEW --against DIR`` embeds only the new
photos and scores them against the catalogue and among themselves; ``--add`` then appends them.

On disk, ``DIR/catalogue.json`` names the segments and each segment's SHA-256 and size; a segment
is ``part-NNNNNN.json`` (its folder and manifest rows) and ``part-NNNNNN.npy`` ((photos, 2, D)
float32, both towers). An add writes its segment under ``DIR/.adding/``, moves it into ``DIR``
under a name no ``catalogue.json`` uses, and only then replaces ``catalogue.json`` (one atomic
rename): a kill at any point leaves the catalogue as it was (the next add removes what such a kill
left behind). No candidate index is kept: the embeddings are the catalogue, and the search over
them is rebuilt for each query (exact, blockwise: 100 new photos against 10,000 cost one
100 x 10,000 x 2,560 product).

A byte-identical copy keeps its own manifest row and its representative's embeddings. Candidate
pairs of a query are the new photos against every catalogue photo and each other when the union
has at most ``dedup.ALL_PAIRS_LIMIT`` photos (``search`` auto or all; then a built, extended and
queried catalogue gives the pairs of one dedup over the union), else each new photo's
``neighbours`` nearest among the catalogue and the new photos. (A catalogue photo whose own nearest
neighbours a new photo would enter is not searched from: pairs between catalogue photos were
scored when they were added.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from samespace import candidates, dedup, features, photos, reports
from samespace.errors import DataError, OutputError, first_line, printable
from samespace.network import SiameseNet

logger = logging.getLogger("samespace.catalogue")

FORMAT = 1
INDEX = "catalogue.json"
STAGING = ".adding"
CATALOGUE_SOURCE = "catalogue"  # the source of catalogue photos in a query's pairs


@dataclasses.dataclass
class Row:
    """A catalogued photo: where it was and what its bytes were."""

    path: str  # absolute, as it was when catalogued
    size: int
    mtime_ns: int
    sha256: str


@dataclasses.dataclass
class Catalogue:
    """A loaded, verified catalogue: manifest rows and both towers' embeddings, row for row."""

    folder: Path
    network: str
    preprocessing: str
    segments: list[dict]
    rows: list[Row]
    first: np.ndarray  # (photos, D) float32
    second: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def identity(net: SiameseNet) -> dict[str, str]:
    """What a catalogue's embeddings depend on: every weight of the network, and its preprocessing."""
    return {"network": features.trunk_fingerprint(net), "preprocessing": net.preprocessing}


def file_digests(paths: list[Path]) -> list[str | None]:
    """SHA-256 of each file (opened non-blocking, as every stage opens photos); None if unreadable."""
    out: list[str | None] = []
    for path in paths:
        try:
            with photos.open_regular(path) as handle:
                out.append(hashlib.file_digest(handle, "sha256").hexdigest())
        except OSError:
            out.append(None)
    return out


def rows_of(embedded: dedup.Embedded) -> tuple[list[Row], np.ndarray]:
    """Manifest rows of an embedded folder's photos and their (photos, 2, D) embeddings (a copy
    gets its representative's). Photos that vanished or changed since they were read are refused."""
    digests = file_digests(embedded.paths)
    rows = []
    for path, digest in zip(embedded.paths, digests):
        try:
            status = path.stat()
        except OSError:
            status = None
        if digest is None or status is None:
            raise DataError(f"{printable(str(path))} vanished while it was catalogued: run again")
        rows.append(Row(str(path.resolve()), status.st_size, status.st_mtime_ns, digest))
    source = np.empty(len(embedded.paths), np.int64)
    for k, position in enumerate(embedded.scored):
        source[[position, *embedded.copies.get(position, [])]] = k
    both = torch.stack([embedded.first, embedded.second], dim=1).detach().float().cpu().numpy()
    return rows, np.ascontiguousarray(both[source])


def sha256_of(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def refuse(folder: Path, why: str) -> DataError:
    return DataError(f"catalogue {printable(str(folder))}: {why}")


def read_index(folder: Path) -> dict:
    index = folder / INDEX
    if not index.is_file():
        raise refuse(folder, f"no {INDEX} in it: not a catalogue (make one with dedup FOLDER --save-catalogue DIR)")
    try:
        payload = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refuse(folder, f"{INDEX} is unreadable or cut short ({first_line(exc)}): rebuild it") from None
    well_formed = isinstance(payload, dict) and isinstance(payload.get("segments"), list)
    if not well_formed or payload.get("format") != FORMAT:
        raise refuse(folder, f"{INDEX} is not a format-{FORMAT} catalogue index: rebuild it with --save-catalogue")
    return payload


def read_segment(folder: Path, segment: dict) -> tuple[list[Row], np.ndarray]:
    """One segment's rows and embeddings, after checking both files' size and SHA-256."""
    try:
        name = str(segment["name"])
        count = int(segment["photos"])
        files = {kind: folder / f"{name}.{kind}" for kind in ("json", "npy")}
        for kind, path in files.items():
            expected = segment[kind]
            if Path(name).name != name or not path.is_file():
                raise refuse(folder, f"{path.name} is missing: the catalogue is incomplete; rebuild it")
            if path.stat().st_size != int(expected["bytes"]) or sha256_of(path) != expected["sha256"]:
                raise refuse(folder, f"{path.name} is truncated or corrupt (size or SHA-256 differs): rebuild it")
        manifest = json.loads(files["json"].read_text(encoding="utf-8"))
        rows = [Row(str(p), int(s), int(m), str(h)) for p, s, m, h in manifest["rows"]]
        both = np.load(files["npy"], allow_pickle=False)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise refuse(folder, f"segment {segment.get('name')!r} is unreadable ({first_line(exc)}): rebuild it") from None
    if both.dtype != np.float32 or both.ndim != 3 or both.shape[:2] != (count, 2) or len(rows) != count:
        raise refuse(folder, f"segment {name} holds {both.shape} {both.dtype} for {count} photos: rebuild it")
    if not np.isfinite(both).all():
        raise refuse(folder, f"segment {name} has non-finite embeddings: rebuild it")
    return rows, both


def load(folder: Path) -> Catalogue:
    """The catalogue in ``folder``, every file checked; one line (``DataError``) if it is not whole."""
    folder = Path(folder)
    payload = read_index(folder)
    rows: list[Row] = []
    parts: list[np.ndarray] = []
    for segment in payload["segments"]:
        if not isinstance(segment, dict):
            raise refuse(folder, f"{INDEX} lists a segment that is not an object: rebuild it")
        more, both = read_segment(folder, segment)
        rows += more
        parts.append(both)
    both = np.concatenate(parts) if parts else np.zeros((0, 2, 0), np.float32)
    dims = {part.shape[2] for part in parts}
    if len(dims) > 1:
        raise refuse(folder, f"its segments have embeddings of different widths {sorted(dims)}: rebuild it")
    return Catalogue(
        folder, str(payload.get("network")), str(payload.get("preprocessing")), list(payload["segments"]),
        rows, both[:, 0], both[:, 1],
    )  # fmt: skip


def check_identity(catalogue: Catalogue, net: SiameseNet) -> None:
    """Refuse, in one line, a catalogue made with another network or preprocessing."""
    mine = identity(net)
    if catalogue.network != mine["network"]:
        raise refuse(
            catalogue.folder,
            f"made with another checkpoint (weights {catalogue.network[:12]}, this one {mine['network'][:12]}): "
            "query it with the checkpoint that made it, or build a new one with --save-catalogue",
        )
    if catalogue.preprocessing != mine["preprocessing"]:
        raise refuse(
            catalogue.folder,
            f"made with preprocessing {catalogue.preprocessing!r}, this run uses {mine['preprocessing']!r}: "
            f"pass --preprocessing {catalogue.preprocessing}",
        )


def check_new_folder(folder: Path) -> None:
    """Before any work: ``folder`` can hold a catalogue (absent, empty, or an existing one's
    leftovers are refused)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError(
            f"catalogue folder {printable(str(folder))} exists and is not empty: "
            "extend a catalogue with --against DIR --add, or choose a new folder"
        )


def write_segment(folder: Path, name: str, rows: list[Row], both: np.ndarray) -> dict:
    """The segment's two files, complete and flushed, under ``folder``; returns its index entry."""
    manifest = folder / f"{name}.json"
    with reports.atomic_write(manifest, "w", encoding="utf-8") as handle:
        json.dump({"rows": [[r.path, r.size, r.mtime_ns, r.sha256] for r in rows]}, handle)
    vectors = folder / f"{name}.npy"
    with reports.atomic_write(vectors, "wb") as handle:
        np.save(handle, np.ascontiguousarray(both, dtype=np.float32), allow_pickle=False)
    entry = {"name": name, "photos": len(rows)}
    for kind, path in (("json", manifest), ("npy", vectors)):
        entry[kind] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return entry


def remove_leftovers(folder: Path, segments: list[dict]) -> None:
    """What an interrupted add left: the staging folder and segment files no index names."""
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    named = {f"{s['name']}.{kind}" for s in segments for kind in ("json", "npy")}
    for path in folder.glob("part-*"):
        if path.name not in named:
            path.unlink(missing_ok=True)


def switch(folder: Path, payload: dict) -> None:
    """The one step that makes an add visible: ``catalogue.json`` replaced atomically."""
    reports.write_json(folder / INDEX, payload)


def append(folder: Path, net: SiameseNet, rows: list[Row], both: np.ndarray, existing: Catalogue | None) -> Path:
    """Append ``rows`` (and their embeddings) as a new segment; a new catalogue when ``existing`` is None."""
    folder = Path(folder)
    segments = list(existing.segments) if existing is not None else []
    known = {row.path for row in existing.rows} if existing is not None else set()
    again = [row.path for row in rows if row.path in known]
    if again:
        raise refuse(folder, f"{printable(again[0])} and {len(again) - 1} more are in it already: nothing added")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_leftovers(folder, segments)
        staging = folder / STAGING
        staging.mkdir()
        number = 1 + max((int(str(s["name"]).split("-")[1]) for s in segments), default=-1)
        name = f"part-{number:06d}"
        entry = write_segment(staging, name, rows, both)
        for kind in ("json", "npy"):
            os.replace(staging / f"{name}.{kind}", folder / f"{name}.{kind}")
        payload = {
            "format": FORMAT, **identity(net), "photos": len(known) + len(rows), "segments": [*segments, entry],
        }  # fmt: skip
        switch(folder, payload)
        staging.rmdir()
    except OSError as exc:
        raise OutputError(f"cannot write the catalogue {printable(str(folder))}: {first_line(exc)}") from None
    logger.info("catalogue %s: %d photos (%d added)", printable(str(folder)), payload["photos"], len(rows))
    return folder / INDEX


def query_pairs(fresh: np.ndarray, pool: np.ndarray, vectors: torch.Tensor, search: str, neighbours: int):
    """Candidate pairs (positions in ``vectors``; unordered, each once) of each ``fresh`` item with
    the ``pool`` (which holds the fresh items too): every pair (``all``) or its nearest (``knn``)."""
    if search == "all":
        is_fresh = np.zeros(len(vectors), bool)
        is_fresh[fresh] = True
        a = np.repeat(fresh, len(pool))
        b = np.tile(pool, len(fresh))
        keep = (a != b) & ~(is_fresh[b] & (b < a))  # fresh-with-fresh once
        return np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    k = min(neighbours, len(pool) - 1)
    found = []
    pool_vectors = vectors[torch.as_tensor(pool)]
    for start in range(0, len(fresh), 1024):
        rows = fresh[start : start + 1024]
        similarity = vectors[torch.as_tensor(rows)] @ pool_vectors.T
        similarity[torch.as_tensor(pool)[None, :] == torch.as_tensor(rows)[:, None]] = -torch.inf
        nearest = pool[similarity.topk(k, dim=1).indices.numpy()]
        found.append(np.stack([np.repeat(rows, k), nearest.reshape(-1)], axis=1))
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def against(
    catalogue: Catalogue,
    embedded: dedup.Embedded,
    head: torch.nn.Sequential,
    *,
    threshold: float = 0.5,
    search: str = "auto",
    neighbours: int = 20,
    keep: str = "largest",
) -> tuple[dedup.Dedup, list[Row], np.ndarray]:
    """New photos scored against the catalogue and among themselves. Returns the result (new
    photos first, named relative to their folder, then the catalogue photos it involves, named by
    their catalogued path) and the new photos' rows and embeddings, for ``append``."""
    rows, both = rows_of(embedded)
    known = {row.path for row in catalogue.rows}
    inside = [row.path for row in rows if row.path in known]
    if inside:
        raise refuse(catalogue.folder, f"{printable(inside[0])} is catalogued already: query a folder of new photos")
    n_old, n_new = len(catalogue), len(rows)
    first = torch.cat([torch.from_numpy(catalogue.first), torch.from_numpy(both[:, 0])])
    second = torch.cat([torch.from_numpy(catalogue.second), torch.from_numpy(both[:, 1])])
    digests = [row.sha256 for row in catalogue.rows] + [row.sha256 for row in rows]
    by_digest: dict[str, list[int]] = {}
    for item, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(item)
    representative = np.array([by_digest[d][0] for d in digests])
    pool = np.flatnonzero(representative == np.arange(len(digests)))  # one per set of copies
    fresh = pool[pool >= n_old]  # new photos with no copy in the catalogue
    if search == "auto":
        search = "all" if len(pool) <= dedup.ALL_PAIRS_LIMIT else "knn"
    a, b = query_pairs(fresh, pool, candidates.search_vectors(first, second), search, neighbours)
    involved = np.unique(np.concatenate([a, b]))  # the head's first layer only for these
    compact = np.searchsorted(involved, a), np.searchsorted(involved, b)
    scores, evaluations = dedup.score_pairs(head, first[involved], second[involved], *compact)
    identical = [group for group in by_digest.values() if len(group) > 1 and group[-1] >= n_old]
    shown = sorted(set(range(n_old, n_old + n_new)) | set(a.tolist()) | set(b.tolist()) | set(sum(identical, [])))
    order = sorted(shown, key=lambda item: (item < n_old, item))  # new photos first
    position = {item: k for k, item in enumerate(order)}
    names = [embedded.names[i - n_old] if i >= n_old else catalogue.rows[i].path for i in order]
    paths = [embedded.paths[i - n_old] if i >= n_old else Path(catalogue.rows[i].path) for i in order]
    renumber = np.vectorize(position.__getitem__, otypes=[np.int64])
    result = dedup.Dedup(
        names, renumber(a) if len(a) else a, renumber(b) if len(b) else b, scores, threshold,
        f"{search} against a catalogue of {n_old}", evaluations,
    )  # fmt: skip
    result.mark_identical([[position[i] for i in group] for group in identical])
    result.trunk_images, result.unreadable, result.engine = embedded.trunk_images, embedded.skipped, embedded.engine
    dedup.rank_for_keeping(result, paths, keep)
    return result, rows, both
