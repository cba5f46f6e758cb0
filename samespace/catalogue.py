"""A kept catalogue: photos embedded once, then new photos checked against them.

``dedup FOLDER --save-catalogue DIR`` keeps, per photo, its manifest row (path, size, mtime,
SHA-256), both towers' float32 embeddings and its ``neighbours`` largest cosine similarities to the
other catalogue photos (k floats: what a query needs to know whether a new photo enters the photo's
own nearest neighbours), with the identity of the network that made them (SHA-256 of all its
weights) and its preprocessing. ``dedup NEW --against DIR`` embeds only the new photos and scores
them against the catalogue and among themselves; ``--add`` then appends them and updates the kept
similarities of the photos whose nearest neighbours a new photo enters.

On disk, ``DIR/catalogue.json`` names the segments, the similarities file and each one's SHA-256
and size; a segment is ``part-NNNNNN.json`` (its folder and manifest rows) and ``part-NNNNNN.npy``
((photos, 2, D) float32, both towers); ``nearest-NNNNNN.npy`` is (photos, k) float32, every photo's
k largest similarities, descending (``-inf`` where the catalogue has fewer photos). An add writes
its files under ``DIR/.adding/``, moves them into ``DIR`` under names no ``catalogue.json`` uses,
and only then replaces ``catalogue.json`` (one atomic rename): a kill at any point leaves the
catalogue as it was (the next add removes what such a kill left behind). Adds lock ``DIR`` and
refuse a catalogue that another add switched after it was loaded; a load that a switch overtakes
reads the new catalogue. No candidate index is kept: the search over the embeddings is rebuilt
for each query (exact, blockwise: 100 new photos against 10,000 cost one 100 x 10,000 x 2,560
product). A query holds the catalogue once, about 10 KB a photo: each file is read once into the
array it holds (hashed and parsed in place), and the search multiplies the embeddings where they
lie, scaled to the unit vectors' products (``Union``, ``tower_scales``). A format-1 catalogue
(made before the similarities were kept) is queried after computing them from its embeddings
(one log line; its next ``--add`` stores them). ``--save-catalogue`` keeps the similarities of
the neighbours dedup's own search found (its table, not a second search).

A byte-identical copy keeps its own manifest row and its representative's embeddings and
similarities. Candidate pairs of a query are those of one dedup over the union that involve a new
photo. Up to ``dedup.ALL_PAIRS_LIMIT`` photos in the union (``search`` auto, or ``all``): every new
photo against every catalogue photo and each other. Else (``knn``) a pair (new n, other m) is a
candidate when m is among n's ``neighbours`` nearest in the union, or n among m's: for a catalogue
photo m, n enters m's nearest when fewer than k photos of the union are more similar to m than n
is (catalogue ones counted from m's kept similarities, new ones directly). The query's search is
exact; the kept similarities come from dedup's own neighbour search (``candidates.nearest_neighbours``),
exact up to ``candidates.EXACT_LIMIT`` photos. Above it that is the compressed index, whose found
neighbours are no more similar than the true ones, so the reverse test then scores a superset of
the exact pairs from the catalogue's side (one dedup over such a union is approximate itself).
Ties: a new photo exactly as similar to m as m's k-th nearest counts as entering it (a pair more);
among photos tied at a new photo's own k-th place, top-k keeps one of them, maybe not the one
dedup's top-k keeps. Similarities within float32 rounding (about 1e-7) of each other can fall
either way, as they can between two block sizes of dedup itself; other than that the pairs equal
one dedup's over the union (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from samespace import candidates, dedup, features, photos, reports
from samespace.checkpoints import sha256_of
from samespace.errors import DataError, OutputError, first_line, printable
from samespace.network import SiameseNet

logger = logging.getLogger("samespace.catalogue")

FORMAT = 2  # 2: with each photo's nearest similarities (format 1 is still read, see ``similarities_of``)
READABLE = (1, FORMAT)
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
    nearest: np.ndarray | None = None  # (photos, k) float32, descending; None: a format-1 catalogue
    nearest_file: str | None = None  # its file's name in ``folder``

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def neighbours(self) -> int:
        """k: how many nearest similarities it keeps per photo (0 for a format-1 catalogue)."""
        return 0 if self.nearest is None else self.nearest.shape[1]


@dataclasses.dataclass
class Addition:
    """What ``append`` writes: the new photos' rows and embeddings, and every photo's (old and new)
    nearest similarities in the new union."""

    rows: list[Row]
    both: np.ndarray  # (new photos, 2, D) float32
    nearest: np.ndarray  # (all photos, k) float32, descending


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
    both = torch.stack([embedded.first, embedded.second], dim=1).detach().float().cpu().numpy()
    return rows, np.ascontiguousarray(both[representatives_of(embedded)])


def representatives_of(embedded: dedup.Embedded) -> np.ndarray:
    """Per photo of ``embedded.paths``, the row of its embeddings (its representative's for a copy)."""
    source = np.empty(len(embedded.paths), np.int64)
    for k, position in enumerate(embedded.scored):
        source[[position, *embedded.copies.get(position, [])]] = k
    return source


@torch.inference_mode()
def nearest_similarities(
    first: torch.Tensor,
    second: torch.Tensor,
    k: int,
    index: str = "auto",
    block: int = 512,
    table: np.ndarray | None = None,
) -> np.ndarray:
    """Each photo's k largest cosine similarities to the others (descending; ``-inf`` where there
    are fewer), of the neighbours dedup's own search finds (``candidates.tower_neighbours``; the
    unit vectors made a block at a time, as that search makes them, never all at once). ``table``:
    that search's result from dedup itself (``Dedup.neighbour_table``), so it is not run twice; one
    of another shape is not it, and the search runs."""
    first, second = first.detach().float().cpu(), second.detach().float().cpu()
    width = first.shape[1] + second.shape[1]  # explicit: a photo alone has a (1, 0) table
    expected = (len(first), min(k, len(first) - 1) if len(first) >= 2 and k >= 1 else 0)
    if table is None or table.shape != expected:
        table = candidates.tower_neighbours(first, second, k, method=index)
    table = torch.as_tensor(table)
    out = torch.full((len(first), k), -torch.inf)
    for start in range(0, len(first), block):
        found = table[start : start + block]
        rows = slice(start, start + len(found))
        flat = found.flatten()
        neighbours = candidates.search_vectors(first[flat], second[flat]).view(*found.shape, width)
        similarity = torch.einsum("nd,nkd->nk", candidates.search_vectors(first[rows], second[rows]), neighbours)
        similarity[found == torch.arange(start, start + len(found))[:, None]] = -torch.inf  # a short list's padding
        out[start : start + len(found), : found.shape[1]] = similarity.sort(dim=1, descending=True).values
    return out.numpy()


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
    if not well_formed or payload.get("format") not in READABLE:
        raise refuse(folder, f"{INDEX} is not a format-{FORMAT} catalogue index: rebuild it with --save-catalogue")
    return payload


def checked_bytes(folder: Path, entry: dict) -> tuple[Path, np.ndarray]:
    """The bytes (uint8) of a file an index entry names ({name, bytes, sha256}), read once and
    checked for size and SHA-256 (one read, not one to hash and one to parse: at 10,000 photos
    the embeddings are 100 MB, and a query reads them every time)."""
    name = str(entry["name"])
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise refuse(folder, f"{path.name} is missing: the catalogue is incomplete; rebuild it")
    size = int(entry["bytes"])
    data = np.fromfile(path, np.uint8) if path.stat().st_size == size else np.zeros(0, np.uint8)
    if len(data) != size or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise refuse(folder, f"{path.name} is truncated or corrupt (size or SHA-256 differs): rebuild it")
    return path, data


def array_of(data: np.ndarray) -> np.ndarray:
    """The array of an ``.npy`` file's bytes, a view of them (no copy); ValueError if they are
    not one whole array of plain numbers (``np.load``'s own header reader, no pickles)."""
    header = io.BytesIO(data[: 1 << 16].tobytes())
    version = np.lib.format.read_magic(header)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} is not one np.save writes")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(header)
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"it holds {dtype} items, not numbers")
    start = header.tell()
    if len(data) - start != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"{len(data) - start} bytes of data for a {shape} {dtype} array")
    return data[start:].view(dtype).reshape(shape, order="F" if fortran else "C")


def read_nearest(folder: Path, payload: dict, photos: int) -> tuple[np.ndarray | None, str | None]:
    """The kept nearest similarities (photos, k), checked; None for a format-1 catalogue."""
    if payload["format"] == 1:
        return None, None
    try:
        path, data = checked_bytes(folder, payload["nearest"])
        nearest = array_of(data)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise refuse(folder, f"its nearest similarities are unreadable ({first_line(exc)}): rebuild it") from None
    k = payload.get("neighbours")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:  # 0 lists: no photo searched from
        raise refuse(folder, f"{INDEX} keeps {k!r} nearest similarities a photo, not a whole number >= 1: rebuild it")
    if nearest.dtype != np.float32 or nearest.shape != (photos, k):
        raise refuse(folder, f"{path.name} holds {nearest.shape} {nearest.dtype} for {photos} photos: rebuild it")
    # the reverse search counts in each list by binary search: a list out of order loses pairs
    if np.isnan(nearest).any() or (nearest > 1.5).any() or (nearest[:, 1:] > nearest[:, :-1]).any():
        raise refuse(
            folder, f"{path.name} holds similarities that are NaN, above 1 or out of descending order: rebuild it"
        )
    return nearest, path.name


def read_segment(folder: Path, segment: dict) -> tuple[list[Row], np.ndarray]:
    """One segment's rows and embeddings, after checking both files' size and SHA-256."""
    try:
        name = str(segment["name"])
        count = int(segment["photos"])
        files = {
            kind: checked_bytes(folder, {**segment[kind], "name": f"{name}.{kind}"})[1] for kind in ("json", "npy")
        }
        manifest = json.loads(files["json"].tobytes().decode("utf-8"))
        rows = [Row(str(p), int(s), int(m), str(h)) for p, s, m, h in manifest["rows"]]
        both = array_of(files["npy"])
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise refuse(folder, f"segment {segment.get('name')!r} is unreadable ({first_line(exc)}): rebuild it") from None
    if both.dtype != np.float32 or both.ndim != 3 or both.shape[:2] != (count, 2) or len(rows) != count:
        raise refuse(folder, f"segment {name} holds {both.shape} {both.dtype} for {count} photos: rebuild it")
    if not np.isfinite(both).all():
        raise refuse(folder, f"segment {name} has non-finite embeddings: rebuild it")
    return rows, both


def load(folder: Path, attempts: int = 3) -> Catalogue:
    """The catalogue in ``folder``, every file checked; one line (``DataError``) if it is not whole.
    An ``--add`` that switches ``catalogue.json`` while it is read (and then removes the replaced
    similarities) is no damage: the new catalogue is read instead."""
    folder = Path(folder)
    payload = read_index(folder)
    for _ in range(attempts - 1):
        try:
            return read_catalogue(folder, payload)
        except DataError:
            switched = read_index(folder)
            if switched == payload:  # damage, not a switch
                raise
            payload = switched
    return read_catalogue(folder, payload)


def read_catalogue(folder: Path, payload: dict) -> Catalogue:
    """The catalogue that the index ``payload`` of ``folder`` names, every file checked."""
    rows: list[Row] = []
    parts: list[np.ndarray] = []
    for segment in payload["segments"]:
        if not isinstance(segment, dict):
            raise refuse(folder, f"{INDEX} lists a segment that is not an object: rebuild it")
        more, both = read_segment(folder, segment)
        rows += more
        parts.append(both)
    dims = {part.shape[2] for part in parts}
    if len(dims) > 1:
        raise refuse(folder, f"its segments have embeddings of different widths {sorted(dims)}: rebuild it")
    both = (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else np.zeros((0, 2, 0), np.float32)
    nearest, nearest_file = read_nearest(folder, payload, len(rows))
    return Catalogue(
        folder, str(payload.get("network")), str(payload.get("preprocessing")), list(payload["segments"]),
        rows, both[:, 0], both[:, 1], nearest, nearest_file,
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


def check_neighbours(catalogue: Catalogue, neighbours: int) -> None:
    """Refuse, in one line, a neighbour search wider than the nearest similarities kept."""
    if 0 < catalogue.neighbours < neighbours:
        raise refuse(
            catalogue.folder,
            f"it keeps {catalogue.neighbours} nearest similarities a photo, --neighbours {neighbours} needs more: "
            f"pass --neighbours {catalogue.neighbours} or fewer, or rebuild it with --neighbours {neighbours}",
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
        entry[kind] = described(path)
    return entry


def described(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def write_nearest(folder: Path, name: str, nearest: np.ndarray) -> dict:
    """The nearest-similarities file, complete and flushed, under ``folder``; returns its index entry."""
    path = folder / f"{name}.npy"
    with reports.atomic_write(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(nearest, dtype=np.float32), allow_pickle=False)
    return {"name": path.name, **described(path)}


def remove_leftovers(folder: Path, segments: list[dict], nearest: str | None, staging: bool = True) -> None:
    """What an interrupted or finished add left: the staging folder, and segment and similarity
    files no index names."""
    if staging:
        shutil.rmtree(folder / STAGING, ignore_errors=True)
    named = {f"{s['name']}.{kind}" for s in segments for kind in ("json", "npy")} | {nearest}
    for path in [*folder.glob("part-*"), *folder.glob("nearest-*")]:
        if path.name not in named:
            path.unlink(missing_ok=True)


def switch(folder: Path, payload: dict) -> None:
    """The one step that makes an add visible: ``catalogue.json`` replaced atomically."""
    reports.write_json(folder / INDEX, payload)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One add at a time in ``folder``: an advisory lock on the folder itself (no lock file).
    Where it cannot be had (no ``fcntl``; some network file systems refuse to lock a folder), none:
    ``check_unchanged`` still refuses an add that another one overtook before it began."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # and the lock with it


def check_unchanged(folder: Path, existing: Catalogue) -> None:
    """Refuse an add whose catalogue was switched by another add after it was loaded: its segment
    list and similarities would drop the other add's photos."""
    payload = read_index(folder)
    nearest = payload.get("nearest")
    name = nearest.get("name") if isinstance(nearest, dict) else None
    if payload.get("segments") != existing.segments or name != existing.nearest_file:
        raise refuse(folder, "it changed since it was loaded (another --add?): nothing added; run the query again")


def save(
    folder: Path,
    net: SiameseNet,
    embedded: dedup.Embedded,
    neighbours: int = 20,
    index: str = "auto",
    result: dedup.Dedup | None = None,
) -> Path:
    """A new catalogue of an embedded folder (``--save-catalogue``), with each photo's
    ``neighbours`` nearest similarities from dedup's own neighbour search (``index``): the one
    ``result`` (dedup of ``embedded`` with the same ``neighbours`` and ``index``, ``keep_table``)
    ran, else run here."""
    rows, both = rows_of(embedded)
    source = representatives_of(embedded)
    table = None if result is None else result.neighbour_table
    nearest = nearest_similarities(embedded.first, embedded.second, neighbours, index, table=table)[source]
    return append(folder, net, Addition(rows, both, nearest), None)


def append(folder: Path, net: SiameseNet, addition: Addition, existing: Catalogue | None) -> Path:
    """Append the new photos as a new segment and replace the nearest similarities; a new
    catalogue when ``existing`` is None."""
    folder = Path(folder)
    rows, both = addition.rows, addition.both
    segments = list(existing.segments) if existing is not None else []
    known = {row.path for row in existing.rows} if existing is not None else set()
    again = [row.path for row in rows if row.path in known]
    if again:
        raise refuse(folder, f"{printable(again[0])} and {len(again) - 1} more are in it already: nothing added")
    if len(addition.nearest) != len(known) + len(rows):
        raise ValueError(f"nearest similarities for {len(addition.nearest)} photos, not {len(known) + len(rows)}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive(folder):  # held to the switch and the clean-up after it
            if existing is not None:
                check_unchanged(folder, existing)
            remove_leftovers(folder, segments, existing.nearest_file if existing is not None else None)
            staging = folder / STAGING
            staging.mkdir()
            number = 1 + max((int(str(s["name"]).split("-")[1]) for s in segments), default=-1)
            name = f"part-{number:06d}"
            entry = write_segment(staging, name, rows, both)
            nearest = write_nearest(staging, f"nearest-{number:06d}", addition.nearest)
            for moved in (f"{name}.json", f"{name}.npy", nearest["name"]):
                os.replace(staging / moved, folder / moved)
            payload = {
                "format": FORMAT, **identity(net), "photos": len(known) + len(rows), "segments": [*segments, entry],
                "neighbours": int(addition.nearest.shape[1]), "nearest": nearest,
            }  # fmt: skip
            switch(folder, payload)
            staging.rmdir()
            remove_leftovers(folder, payload["segments"], nearest["name"], staging=False)  # the replaced similarities
    except OSError as exc:
        raise OutputError(f"cannot write the catalogue {printable(str(folder))}: {first_line(exc)}") from None
    logger.info("catalogue %s: %d photos (%d added)", printable(str(folder)), payload["photos"], len(rows))
    return folder / INDEX


def all_pairs(fresh: np.ndarray, pool: np.ndarray, items: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (a < b) of a ``fresh`` item with the ``pool`` (which holds the fresh items too), each once."""
    is_fresh = np.zeros(items, bool)
    is_fresh[fresh] = True
    a = np.repeat(fresh, len(pool))
    b = np.tile(pool, len(fresh))
    keep = (a != b) & ~(is_fresh[b] & (b < a))  # fresh-with-fresh once
    return np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])


@dataclasses.dataclass
class Union:
    """Both towers' embeddings of a query's union: the catalogue's items (``< n_old``) then the new
    ones, each read where it lies, never joined into one (photos, 2,560) copy (at 10,000 photos
    that copy and its unit vectors would cost more than the search itself)."""

    old_first: torch.Tensor
    old_second: torch.Tensor
    new_first: torch.Tensor
    new_second: torch.Tensor

    @property
    def n_old(self) -> int:
        return len(self.old_first)

    def rows(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, second) embeddings of ``items`` (indices into the union): views without a copy
        where ``items`` is a run of consecutive indices on one side (a catalogue without byte
        copies is searched so), else gathered."""
        items = torch.as_tensor(items, dtype=torch.int64)
        if not len(items):  # the new photos' width, also for an empty catalogue's (0, 0) arrays
            return self.new_first[:0], self.new_second[:0]
        start, stop = int(items[0]), int(items[-1]) + 1
        run = stop - start == len(items) and bool((items[1:] > items[:-1]).all())
        old = items < self.n_old
        if bool(old.all()):
            return (
                (self.old_first[start:stop], self.old_second[start:stop])
                if run
                else (self.old_first[items], self.old_second[items])
            )
        if not bool(old.any()):
            at = slice(start - self.n_old, stop - self.n_old) if run else items - self.n_old
            return self.new_first[at], self.new_second[at]
        out = []
        for catalogued, new in ((self.old_first, self.new_first), (self.old_second, self.new_second)):
            gathered = torch.empty((len(items), new.shape[1]), dtype=new.dtype)
            gathered[old], gathered[~old] = catalogued[items[old]], new[items[~old] - self.n_old]
            out.append(gathered)
        return out[0], out[1]

    def unit(self, items: torch.Tensor) -> torch.Tensor:
        """``candidates.search_vectors`` of ``items``."""
        return candidates.search_vectors(*self.rows(items))


def tower_scales(first: torch.Tensor, second: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the factors that turn each tower's embedding into its half of the row's
    ``candidates.search_vectors`` unit vector (each tower normalised, as ``normalize`` does with its
    ``eps``, then the pair): a product with the raw embeddings times these is a product with the
    unit vectors, without making them (equal up to float32 rounding)."""
    r1, r2 = first.norm(dim=1), second.norm(dim=1)
    n1, n2 = r1.clamp_min(eps), r2.clamp_min(eps)
    joined = ((r1 / n1) ** 2 + (r2 / n2) ** 2).sqrt().clamp_min(eps)  # sqrt(2) unless a tower is zero
    return 1 / (n1 * joined), 1 / (n2 * joined)


@dataclasses.dataclass
class Neighbourhood:
    """What one exact search of the fresh items against the pool gives."""

    pairs: np.ndarray  # (m, 2) the union's k-nearest candidate pairs (a < b) that involve a fresh item
    fresh: np.ndarray  # (fresh items, K) their nearest similarities in the union, descending
    kept: np.ndarray  # (catalogue items, K) the kept similarities, the fresh items taken in


def entering(lists: torch.Tensor, toward: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(catalogue item, fresh item) positions where the fresh item enters the catalogue item's k
    nearest in the union: fewer than k union items are more similar to it, counted in its kept
    similarities (``lists``, descending) and among the fresh items (``toward``: (items, fresh)).
    Only rows with a fresh item at least as similar as their kept k-th can have one: the exact
    count runs on those alone."""
    rows = (toward >= lists[:, k - 1 : k]).any(dim=1).nonzero().squeeze(1)
    lists, toward = lists[rows, :k], toward[rows]
    beaten = k - torch.searchsorted(lists.flip(1).contiguous(), toward, right=True)
    beaten += toward.shape[1] - torch.searchsorted(toward.sort(dim=1).values, toward, right=True)
    c, n = (beaten < k).nonzero(as_tuple=True)
    return rows[c], n


@torch.inference_mode()
def search_union(
    fresh: np.ndarray, pool: np.ndarray, union: Union, kept: np.ndarray, k: int, block: int = 4096
) -> Neighbourhood:
    """The fresh items against the pool (catalogue items ``< union.n_old``, then the fresh ones),
    exactly, in blocks of the pool, each a product of the fresh items' unit vectors with the
    block's raw tower embeddings in place, scaled (``tower_scales``). A pair is a candidate when the
    pool item is among the fresh item's k nearest (forward), or the fresh item among a catalogue
    item's k nearest in the union (reverse, ``entering``); k = 0: no pairs, only the similarities
    for ``append``."""
    width, n_old = kept.shape[1], union.n_old
    fresh_t, kept_t = torch.as_tensor(fresh), torch.from_numpy(kept)
    queries, updated = union.unit(fresh_t), kept_t.clone()
    halves = queries.split([union.new_first.shape[1], union.new_second.shape[1]], dim=1)
    depth = min(max(k, width), len(pool))
    top_s, top_i = torch.empty((len(fresh), 0)), torch.empty((len(fresh), 0), dtype=torch.int64)
    reverse = [torch.empty((0, 2), dtype=torch.int64)]
    for start in range(0, len(pool), block):
        columns = torch.as_tensor(pool[start : start + block])
        first, second = union.rows(columns)
        scale_1, scale_2 = tower_scales(first, second)
        similarity = (halves[0] @ first.T) * scale_1 + (halves[1] @ second.T) * scale_2
        similarity[columns[None, :] == fresh_t[:, None]] = -torch.inf  # never one's own neighbour
        best = similarity.topk(min(depth, len(columns)), dim=1)
        top_s, at = torch.cat([top_s, best.values], 1).topk(min(depth, top_s.shape[1] + len(columns)), dim=1)
        top_i = torch.cat([top_i, columns[best.indices]], 1).gather(1, at)
        old = columns < n_old
        items, toward = columns[old], similarity[:, old].T  # (catalogue items, fresh items)
        if not len(items) or not width:
            continue
        lists = kept_t[items]
        if k:
            c, n = entering(lists, toward, k)
            reverse.append(torch.stack([items[c], fresh_t[n]], 1))
        changed = (toward > lists[:, -1:]).any(dim=1).nonzero().squeeze(1)  # a fresh item in its kept ones
        merged = torch.cat([lists[changed], toward[changed]], 1).topk(width, dim=1).values
        updated[items[changed]] = merged
    forward = torch.stack([fresh_t.repeat_interleave(k), top_i[:, :k].reshape(-1)], 1)
    pairs = np.unique(np.sort(torch.cat([forward, *reverse]).numpy(), axis=1), axis=0)
    nearest = torch.full((len(fresh), width), -torch.inf)
    nearest[:, : min(width, top_s.shape[1])] = top_s[:, :width]
    return Neighbourhood(pairs, nearest.numpy(), updated.numpy())


def similarities_of(catalogue: Catalogue, representative: np.ndarray, neighbours: int) -> np.ndarray:
    """The catalogue's kept nearest similarities; for a format-1 catalogue, computed now from its
    embeddings (``representative``: each row's representative row) with one log line."""
    if catalogue.nearest is not None:
        return catalogue.nearest
    logger.warning(
        "catalogue %s is format 1 (no nearest similarities kept): computing them from its %d embeddings; "
        "--add keeps them",
        printable(str(catalogue.folder)), len(catalogue),
    )  # fmt: skip
    reps, where = np.unique(representative, return_inverse=True)
    first, second = torch.from_numpy(catalogue.first[reps]), torch.from_numpy(catalogue.second[reps])
    return nearest_similarities(first, second, neighbours)[where]


def against(
    catalogue: Catalogue,
    embedded: dedup.Embedded,
    head: torch.nn.Sequential,
    *,
    threshold: float = 0.5,
    search: str = "auto",
    neighbours: int = 20,
    keep: str = "largest",
) -> tuple[dedup.Dedup, Addition]:
    """New photos scored against the catalogue and among themselves. Returns the result (new
    photos first, named relative to their folder, then the catalogue photos it involves, named by
    their catalogued path) and what ``append`` adds (the new photos' rows and embeddings, and
    every photo's nearest similarities in the union)."""
    rows, both = rows_of(embedded)
    known = {row.path for row in catalogue.rows}
    inside = [row.path for row in rows if row.path in known]
    if inside:
        raise refuse(catalogue.folder, f"{printable(inside[0])} is catalogued already: query a folder of new photos")
    n_old, n_new = len(catalogue), len(rows)
    union = Union(*(torch.from_numpy(part) for part in (catalogue.first, catalogue.second, both[:, 0], both[:, 1])))
    digests = [row.sha256 for row in catalogue.rows] + [row.sha256 for row in rows]
    by_digest: dict[str, list[int]] = {}
    for item, digest in enumerate(digests):
        by_digest.setdefault(digest, []).append(item)
    representative = np.array([by_digest[d][0] for d in digests])
    pool = np.flatnonzero(representative == np.arange(len(digests)))  # one per set of copies
    fresh = pool[pool >= n_old]  # new photos with no copy in the catalogue
    if search == "auto":
        search = "all" if len(pool) <= dedup.ALL_PAIRS_LIMIT else "knn"
    if search == "knn":
        check_neighbours(catalogue, neighbours)
    kept = similarities_of(catalogue, representative[:n_old], neighbours)
    k = min(neighbours, len(pool) - 1) if search == "knn" else 0
    found = search_union(fresh, pool, union, kept, k)
    a, b = all_pairs(fresh, pool, len(digests)) if search == "all" else (found.pairs[:, 0], found.pairs[:, 1])
    involved = np.unique(np.concatenate([a, b]))  # the head's first layer only for these
    compact = np.searchsorted(involved, a), np.searchsorted(involved, b)
    scores, evaluations = dedup.score_pairs(head, *union.rows(torch.from_numpy(involved)), *compact)
    identical = [group for group in by_digest.values() if len(group) > 1 and group[-1] >= n_old]
    shown = sorted(set(range(n_old, n_old + n_new)) | set(a.tolist()) | set(b.tolist()) | set(sum(identical, [])))
    order = sorted(shown, key=lambda item: (item < n_old, item))  # new photos first
    position = {item: j for j, item in enumerate(order)}
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
    nearest = np.concatenate([found.kept, np.zeros((n_new, kept.shape[1]), np.float32)])
    nearest[fresh] = found.fresh
    return result, Addition(rows, both, nearest[representative])  # a copy: its representative's
