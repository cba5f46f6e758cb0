"""Files that inference writes: JSON, CSV, the ROC/PR picture and the dedup HTML report.

Every file is written to a temporary name in its folder and renamed into place when complete, so a
report is there whole or not at all. File names that are not valid UTF-8 (Python holds their bytes
as PEP 383 surrogate escapes) are kept losslessly in JSON and CSV and shown escaped in HTML.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import ctypes
import errno
import html
import io
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterable, Iterator, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image, UnidentifiedImageError
from PIL import features as pil_features

from samespace.errors import OutputError, first_line, plural, printable
from samespace.photos import Skipped, read_thumbnail

if TYPE_CHECKING:
    from matplotlib.figure import Figure

THUMBNAIL_SIZE = 96  # px, longest side: about 1.2 KB of WebP, so 10,000 photos fit in ~20 MB
THUMBNAIL_QUALITY = 70
GROUPS_PER_PAGE = 50  # groups on each collapsible "page" of the report; the first is open
PHOTOS_PER_PAGE = 300  # and about this many photos at most, so the first page loads fast
EAGER_PHOTOS = 60  # photos a group shows at once; the rest behind "more photos"
MAX_PAIR_ROWS = 50  # pairs listed per group; pairs.csv has them all
IDENTICAL_LABEL = "identical file"  # a byte-identical pair: no model score involved
BORDERLINE_PAIRS = 12  # pairs closest to the threshold shown side by side, the ones worth a look
BORDERLINE_SIZE = 256  # px, longest side of their pictures: readable, about 10 KB each
# Captions wrap after these (file names, paths) rather than anywhere inside a word.
BREAK_AFTER = re.compile(r"([/_\-.])")
LOOK_NOTE = "; <a href='#borderline'>the pairs closest to the threshold</a>, the ones worth a look, follow the groups. "
# A spreadsheet runs a cell that begins with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
_SURROGATES = re.compile("[\ud800-\udfff]")


def prepare_output(folder: str | Path, force: bool, create: bool = True) -> Path:
    """Check ``folder`` (refusing a non-empty one unless ``force``: reports are never overwritten
    unasked) and create it. ``create=False`` only checks, so a failure later leaves nothing behind."""
    folder = Path(folder)
    if folder.is_file():
        raise OutputError(f"output {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OutputError(f"output folder {folder} is not empty; pass --force to overwrite its reports")
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {folder}: {first_line(exc)}") from None
    return folder


def _default_mode(base: int = 0o666) -> int:
    """The permissions a plain ``open(path, "w")`` (``base`` 0o777: ``mkdir``) would give; mkstemp
    and mkdtemp make 0600 and 0700."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file handle on a temporary name next to ``path``, renamed onto ``path`` only when the
    block completes; on any error the temporary file is removed and ``path`` is untouched.
    Failures to write raise ``OutputError`` (one line)."""
    path = Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {first_line(exc)}") from None
    try:
        with os.fdopen(descriptor, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _default_mode())
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {first_line(exc)}") from None
        raise


@contextlib.contextmanager
def output_set(output: Path) -> Iterator[Path]:
    """A new folder beside ``output`` to write one run's files into, switched in for ``output``
    as a whole when the block completes: a reader sees the old set or the new one, never a mix.
    On any failure the new folder is removed and ``output`` is untouched. Files in ``output``
    that the new set does not have (the user's own) are carried over into the new folder."""
    output = Path(output)
    # Beside the folder as named (the report's links to photos are relative to it); a link to a
    # folder stays a link, and the folder it points to is switched.
    target = Path(os.path.realpath(output) if output.is_symlink() else os.path.abspath(output))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        os.chmod(staging, _default_mode(0o777))
    except OSError as exc:
        raise OutputError(f"cannot write the reports beside {output}: {first_line(exc)}") from None
    try:
        yield staging
        switch_folder(staging, target)
    except OSError as exc:
        raise OutputError(f"cannot write the reports into {output}: {first_line(exc)}; it was left as it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new set on failure, else the old one


def switch_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` in place of ``target`` (leaving the old one at ``new``), with the
    entries of ``target`` that ``new`` lacks moved into it first; all or nothing."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    kept = [name for name in os.listdir(target) if not os.path.lexists(new / name)]
    moved: list[str] = []
    try:
        for name in kept:
            os.rename(target / name, new / name)
            moved.append(name)
        exchange(new, target)
    except OSError:
        for name in reversed(moved):  # back where they were
            with contextlib.suppress(OSError):
                os.rename(new / name, target / name)
        raise


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def exchange(first: Path, second: Path) -> None:
    """Swap two folders: atomically with Linux's renameat2(RENAME_EXCHANGE), else (another
    system, or a file system without it) by two renames, undone if the second fails."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(second))
    aside = first.with_name(first.name + ".old")
    os.rename(second, aside)
    try:
        os.rename(first, second)
    except OSError:
        os.rename(aside, second)
        raise
    os.rename(aside, first)


def to_json(payload: object) -> str:
    """JSON text, UTF-8 readable. A name's undecodable bytes stay as their surrogate escapes
    (``"caf\\udce9.jpg"`` for the byte 0xE9): ``os.fsencode(json.loads(...))`` gives the original bytes."""
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    return _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def write_json(path: Path, payload: object) -> Path:
    """``payload`` as UTF-8 JSON (see ``to_json`` for names that are not UTF-8)."""
    text = to_json(payload)
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def write_json_items(path: Path, items: Iterable[tuple[str, object]]) -> Path:
    """A JSON object written one member at a time, the text ``write_json`` would write for
    ``dict(items)``, without holding the whole object or its text."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        empty = True
        for key, value in items:
            member = to_json({key: value})[2:-3]  # '{\n  "key": ...\n}\n' less its braces
            handle.write(("{\n" if empty else ",\n") + member)
            empty = False
        handle.write("{}\n" if empty else "\n}\n")
    return path


def csv_cell(name: str) -> str:
    """A file name as a CSV cell a spreadsheet shows as text: a leading ``'`` is added when the
    name begins with a formula character (``= + - @``, tab, CR, LF) or with ``'`` itself, so
    dropping one leading ``'`` always gives the name back."""
    return "'" + name if name.startswith(FORMULA_STARTS + ("'",)) else name


def write_pairs_csv(
    path: Path,
    names: Sequence[str],
    first: np.ndarray,
    second: np.ndarray,
    scores: np.ndarray,
    identical: Sequence[Sequence[int]] = (),
) -> Path:
    """Scored pairs, best first, then each byte-identical group once:
    ``first,second,score,reason,files`` (an identical group: its first two files, score 1, reason
    ``identical file`` and its number of files, so k copies cost one row, not k(k-1)/2). UTF-8; a
    name's bytes that are not UTF-8 are written as they are (surrogateescape), so the cells hold the
    file names' exact bytes; names a spreadsheet would run as formulas are quoted (``csv_cell``)."""
    order = np.argsort(-scores, kind="stable")
    cells = [csv_cell(name) for name in names]
    with atomic_write(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["first", "second", "score", "reason", "files"])
        for k in order:
            writer.writerow([cells[first[k]], cells[second[k]], f"{scores[k]:.6f}", "model score", 2])
        for group in identical:
            writer.writerow([cells[group[0]], cells[group[1]], f"{1.0:.6f}", IDENTICAL_LABEL, len(group)])
    return path


# --------------------------------------------------------------------------------------------
# curves.png


def curves_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    checkpoint: str | None = None,
    dataset: str | None = None,
    random_trunk: bool = False,
) -> "Figure":
    """ROC and precision-recall curves of each named (labels, scores) set, side by side, titled
    with the checkpoint and data set; noted when the checkpoint's trunk is random."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, no backend switch
    from sklearn import metrics as skm

    figure = Figure(figsize=(11, 5.2))
    roc, pr = figure.subplots(1, 2)
    for number, (name, (labels, scores)) in enumerate(curves.items()):
        colour = f"C{number % 10}"  # a set's ROC, PR and chance lines share its colour
        labels = np.asarray(labels)
        if not 0 < np.sum(labels) < len(labels):
            continue  # one class only: neither curve is defined
        fpr, tpr, _ = skm.roc_curve(labels, scores)
        roc.plot(fpr, tpr, color=colour, label=f"{name} (ROC-AUC {skm.auc(fpr, tpr):.3f})")
        precision, recall, _ = skm.precision_recall_curve(labels, scores)
        prevalence = float(np.mean(labels))
        # Precision only changes at a threshold: steps, as sklearn draws it; a line between the
        # points of tied scores would invent precisions no threshold gives.
        pr.plot(
            recall,
            precision,
            color=colour,
            drawstyle="steps-post",
            label=f"{name} (PR-AUC (average precision) {skm.average_precision_score(labels, scores):.3f})",
        )
        pr.axhline(
            prevalence, color=colour, linestyle=":", linewidth=1, label=f"{name} chance = prevalence {prevalence:.3f}"
        )
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance (ROC-AUC 0.5)")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    roc.legend(loc="lower right", fontsize=8)
    if pr.get_legend_handles_labels()[0]:  # none when no set has both classes: no empty legend warning
        pr.legend(loc="lower left", fontsize=8)  # high precision at low recall: that corner is free
    for axis in (roc, pr):
        axis.grid(alpha=0.3)
    title = "SameSpace" + (f" checkpoint {printable(checkpoint)}" if checkpoint else "")
    figure.suptitle(title + (f" on {printable(dataset)}" if dataset else ""), fontsize=11)
    bottom = 0.0
    if random_trunk:
        figure.text(
            0.5,
            0.015,
            "Random trunk: this checkpoint was trained without ImageNet weights, "
            "so these curves check the pipeline, not SameSpace's accuracy.",
            ha="center",
            color="firebrick",
            fontsize=9,
        )
        bottom = 0.05
    figure.tight_layout(rect=(0, bottom, 1, 1))
    return figure


def write_curves_png(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    checkpoint: str | None = None,
    dataset: str | None = None,
    random_trunk: bool = False,
) -> Path:
    """``curves_figure`` as a PNG."""
    figure = curves_figure(curves, checkpoint=checkpoint, dataset=dataset, random_trunk=random_trunk)
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    return path


# --------------------------------------------------------------------------------------------
# report.html


def _thumbnail_format() -> tuple[str, str]:
    """WebP (a quarter smaller than JPEG at the same quality, shown by every current browser)
    when this Pillow can write it, else JPEG."""
    return ("WEBP", "image/webp") if pil_features.check("webp") else ("JPEG", "image/jpeg")


def thumbnail_uri(path: Path, size: int = THUMBNAIL_SIZE) -> str:
    """A small picture of a photo (upright, RGB) as a data URI, read-only on the original and
    decoded in bounded memory (JPEG draft, box reduction), also for huge photos."""
    kind, mime = _thumbnail_format()
    buffer = io.BytesIO()
    extra = {"optimize": True} if kind == "JPEG" else {}
    read_thumbnail(path, size).save(buffer, format=kind, quality=THUMBNAIL_QUALITY, **extra)
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail_or_reason(path: Path, size: int = THUMBNAIL_SIZE) -> str:
    """The data URI, or for a photo that no longer reads (moved, changed since it was scored), a
    short reason without the path, which the caption already shows."""
    try:
        return thumbnail_uri(path, size)
    except UnidentifiedImageError:
        return "no preview: not an image PIL reads"
    except OSError as exc:
        return f"no preview: {exc.strerror or first_line(exc, 60)}"  # strerror: "No such file ..."
    except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"no preview: {first_line(exc, 60)}"


def breakable(text: str) -> str:
    """``text`` escaped for HTML, with a line-break opportunity (``<wbr>``) after each / _ - and .
    so that a narrow caption wraps a file name at its parts, not mid-word."""
    return BREAK_AFTER.sub(r"\1<wbr>", html.escape(printable(text)))


def photo_href(photo: Path, report_folder: Path) -> str:
    """A link from the report to a photo: relative, so the two can move together, and
    percent-encoded from the name's bytes (``#``, ``%``, ``:`` and non-UTF-8 bytes included)."""
    target = os.path.abspath(photo)
    try:
        relative = os.path.relpath(target, os.path.abspath(report_folder))
    except ValueError:  # another drive on Windows: no relative path
        return Path(target).as_uri()
    return quote(os.fsencode(Path(relative).as_posix()), safe="/")


STYLE = """
:root{color-scheme:light;--line:#dde1e6;--muted:#5f6b7a}
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:1.2em 2em;max-width:1400px;color:#1f2328}
h1{font-size:1.4em;margin:.2em 0 .6em;overflow-wrap:anywhere}
.summary{display:flex;flex-wrap:wrap;gap:.5em;margin:0 0 .8em;padding:0}
.summary div{border:1px solid var(--line);border-radius:6px;padding:.35em .8em;background:#f6f8fa}
.summary dt{font-size:.75em;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
.summary dd{margin:0;font-weight:600;font-size:1.1em;overflow-wrap:anywhere}
.note{color:var(--muted);margin:.3em 0 1em}
details.page{border-top:2px solid var(--line);padding:.4em 0}
details.page>summary{font-weight:600;font-size:1.05em;cursor:pointer}
details.page>.groups{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start;margin:.6em 0}
details.group{border:1px solid var(--line);border-radius:6px;padding:.4em .8em;max-width:100%;box-sizing:border-box}
details.group>summary{cursor:pointer;font-weight:600}
details.group>summary .scores{font-weight:400;color:var(--muted)}
.photos{display:flex;flex-wrap:wrap;gap:.6em;margin:.5em 0}
figure{margin:0;width:104px}
figure>a{display:flex;align-items:center;justify-content:center;width:100px;height:100px;
 background:#eef1f4;border:2px solid transparent;border-radius:4px}
figure>a:hover,figure:target>a{border-color:#0969da}
figure img{max-width:96px;max-height:96px;display:block}
figure .missing{font-size:.7em;color:var(--muted);padding:.3em;text-align:center;overflow:hidden;max-height:94px}
figcaption{font-size:.72em;line-height:1.25;overflow-wrap:break-word;margin-top:.2em}
figcaption .match{color:var(--muted)}
details.more>summary,details.pairs>summary{cursor:pointer;color:var(--muted);font-size:.9em}
table{border-collapse:collapse;font-size:.82em;margin:.4em 0}
caption{text-align:left;color:var(--muted);font-size:.9em}
td,th{padding:.15em .7em;border-bottom:1px solid #eee;text-align:left;overflow-wrap:anywhere}
td.score,th.score{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.skipped li{overflow-wrap:anywhere}
.borderline{display:flex;flex-wrap:wrap;gap:1em;margin:.6em 0}
.borderline>div{border:1px solid var(--line);border-radius:6px;padding:.5em;width:560px;max-width:100%;
 box-sizing:border-box}
.borderline .verdict{font-weight:600;margin:0 0 .4em}
.borderline .side{display:flex;gap:8px}
.borderline figure{width:262px}
.borderline figure>a{width:262px;height:262px}
.borderline figure img{max-width:256px;max-height:256px}
.borderline figcaption{font-size:.8em}
.warning{background:#fff1e5;border:1px solid #d1242f;border-radius:6px;padding:.5em .8em;color:#82071e;font-weight:600}
.kept{color:#1a7f37}
"""


def _summary_value(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return printable(str(value))
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


# Parts of the page after the first are kept as inert text (a ``<script type="text/html">``, which
# the browser only scans) or an inert ``<template>`` (nested in such text, where a script cannot
# be), and built when their <details> is first opened: a report of 10,000 photos then loads as
# fast as one of 100. Every file name and reason is HTML-escaped, so no "</script" can occur in
# them. A link to an element not built yet (#g75, #p1234) builds and opens what holds it.
SCRIPT = """
(() => {
  const holders = (d) => d.querySelectorAll(':scope>script[type="text/html"],:scope>template');
  const build = (d) => {
    for (const h of holders(d)) {
      if (h.content) h.replaceWith(h.content); else { h.insertAdjacentHTML('beforebegin', h.textContent); h.remove(); }
    }
  };
  document.addEventListener('toggle', (e) => { if (e.target.open) build(e.target); }, true);
  const reveal = () => {
    const id = decodeURIComponent(location.hash.slice(1));
    for (let depth = 0; id && !document.getElementById(id) && depth < 4; depth++) {
      const holder = [...document.querySelectorAll('script[type="text/html"],template')].find((h) =>
        h.content ? h.content.getElementById(id) : h.textContent.includes(`id='${id}'`));
      if (!holder) return;
      build(holder.parentElement);
    }
    const target = id && document.getElementById(id);
    if (!target) return;
    for (let d = target.closest('details'); d; d = d.parentElement.closest('details')) d.open = true;
    target.scrollIntoView();
  };
  reveal();
  addEventListener('hashchange', reveal);
})();
"""
NO_SCRIPT = "<noscript><p class='note'>These groups need JavaScript; duplicates.json lists them.</p></noscript>"


def best_match_html(
    member: int,
    match: tuple[int, float] | None,
    names: Sequence[str],
    shown_photos: dict[int, str],
    identical: set[tuple[int, int]],
) -> str:
    """The line under a photo naming its best-scoring partner (a link when the report shows it)."""
    if match is None:
        return ""
    other, score = match
    same = (member, other) in identical or (other, member) in identical
    name = breakable(names[other])
    target = f"<a href='#p{other}'>{name}</a>" if other in shown_photos else name
    return f"<br><small class='match'>best match {IDENTICAL_LABEL if same else f'{score:.4f}'}: {target}</small>"


def borderline_html(
    folder: Path,
    report_folder: Path,
    names: Sequence[str],
    borderline: Sequence[tuple[float, int, int]],
    threshold: float,
    identical: set[tuple[int, int]] = frozenset(),
) -> str:
    """The pairs closest to the threshold, each photo beside its partner at ``BORDERLINE_SIZE``:
    duplicates just above it and near misses just below, the decisions worth checking by eye."""
    members = sorted({m for _, a, b in borderline for m in (a, b)})
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        drawn = pool.map(lambda m: _thumbnail_or_reason(folder / names[m], BORDERLINE_SIZE), members)
        pictures = dict(zip(members, drawn))

    def side(member: int) -> str:
        picture = pictures[member]
        shown = html.escape(printable(names[member]))
        inner = (
            f"<img src='{picture}' alt='{shown}'>"
            if picture.startswith("data:")
            else f"<span class='missing'>{html.escape(picture)}</span>"
        )
        href = html.escape(photo_href(folder / names[member], report_folder))
        return f"<figure><a href='{href}'>{inner}</a><figcaption>{breakable(names[member])}</figcaption></figure>"

    cards = []
    for score, a, b in borderline:
        duplicate = score >= threshold
        verdict = "duplicate" if duplicate else "not a duplicate"
        digits = next((d for d in (4, 5, 6) if round(score - threshold, d)), 6)  # enough to see the gap
        cards.append(
            f"<div><p class='verdict'>{score:.{digits}f} · {verdict} ({'≥' if duplicate else '&lt;'} {threshold:g}, "
            f"{score - threshold:+.{digits}f})</p><div class='side'>{side(a)}{side(b)}</div></div>"
        )
    return (
        f"<section id='borderline'><h2>Worth a look: the {plural(len(borderline), 'pair')} closest to the "
        f"threshold {threshold:g}</h2><p class='note'>A small change of threshold would flip these; "
        f"pairs.csv has every scored duplicate.</p><div class='borderline'>{''.join(cards)}</div></section>"
    )


def pages_of(groups: Sequence[Sequence[int]]) -> list[range]:
    """Consecutive groups in pages of at most ``GROUPS_PER_PAGE`` groups and about
    ``PHOTOS_PER_PAGE`` shown photos (one group at least)."""
    pages: list[range] = []
    start, photos = 0, 0
    for number, members in enumerate(groups):
        shown = min(len(members), EAGER_PHOTOS)
        if number > start and (number - start == GROUPS_PER_PAGE or photos + shown > PHOTOS_PER_PAGE):
            pages.append(range(start, number))
            start, photos = number, 0
        photos += shown
    if groups:
        pages.append(range(start, len(groups)))
    return pages


class GroupRows:
    """Each group's (score, first, second) pairs, built when its group is written: the pairs are
    kept as arrays sorted by group, not as a Python tuple per pair."""

    def __init__(
        self,
        pair_scores: dict[tuple[int, int], float] | tuple[np.ndarray, np.ndarray, np.ndarray],
        group_of: dict[int, int],
        count: int,
    ):
        if isinstance(pair_scores, dict):
            a, b = (np.array([pair[side] for pair in pair_scores], dtype=np.int64) for side in (0, 1))
            s = np.array(list(pair_scores.values()), dtype=np.float64)
        else:
            a, b, s = (np.asarray(column) for column in pair_scores)
        number = np.full(max(count, 1), -1, dtype=np.int64)
        number[list(group_of)] = list(group_of.values())
        joined = np.flatnonzero((number[a] >= 0) & (number[a] == number[b])) if len(a) else np.zeros(0, np.int64)
        order = joined[np.argsort(number[a[joined]], kind="stable")]  # groups are joined by these pairs
        self.a, self.b, self.s = a[order], b[order], s[order]
        self.bounds = np.searchsorted(number[self.a], np.arange(len(set(group_of.values())) + 1))

    def __getitem__(self, group: int) -> list[tuple[float, int, int]]:
        span = range(self.bounds[group], self.bounds[group + 1])
        return [(float(self.s[k]), int(self.a[k]), int(self.b[k])) for k in span]


def write_dedup_html(
    path: Path,
    folder: Path,
    names: Sequence[str],
    groups: Sequence[Sequence[int]],
    pair_scores: dict[tuple[int, int], float] | tuple[np.ndarray, np.ndarray, np.ndarray],
    unreadable: Sequence[Skipped],
    summary: dict,
    identical: set[tuple[int, int]] = frozenset(),
    warnings: Sequence[str] = (),
    details: dict[int, str] | None = None,
    best_matches: dict[int, tuple[int, float]] | None = None,
    borderline: Sequence[tuple[float, int, int]] = (),
    threshold: float | None = None,
) -> Path:
    """A self-contained page: ``summary`` first, then the duplicate groups, largest first, in
    collapsible pages (the first open); each photo of a group once, as a small inlined thumbnail
    linking to the original; each group's best pair scores in a collapsed table; then the files
    that were skipped. Only photos in groups get a thumbnail. A group's first photo is marked kept;
    pairs in ``identical`` are labelled "identical file", apart from model scores; ``warnings``
    (about the checkpoint) are a banner above everything. Under each photo: ``details`` (its
    resolution, size, date) and its best match with its score (``best_matches``). After the
    groups, the ``borderline`` pairs (score, first, second) nearest ``threshold``, side by side
    at a readable size."""
    esc = html.escape

    def shown(text: str) -> str:
        return esc(printable(text))

    report_folder = Path(path).parent
    groups = sorted(groups, key=lambda members: (-len(members), min(members)))
    copy_of = {b: a for a, b in identical}  # an identical copy shows its first file's thumbnail
    thumbnails: dict[int, str] = {}  # only the page being written: each page's are dropped after it

    def draw(members: list[int]) -> None:
        thumbnails.clear()
        page = set(members)
        drawn = [m for m in members if m not in copy_of or copy_of[m] not in page]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
            thumbnails.update(zip(drawn, pool.map(lambda m: _thumbnail_or_reason(folder / names[m]), drawn)))
        for member in (m for m in members if m not in thumbnails):
            shared = thumbnails.get(copy_of[member], "")
            thumbnails[member] = shared if shared.startswith("data:") else _thumbnail_or_reason(folder / names[member])

    group_of = {member: number for number, members in enumerate(groups) for member in members}
    rows = GroupRows(pair_scores, group_of, len(names))

    kept = {members[0] for members in groups}

    def figure(member: int) -> str:
        name, thumbnail = names[member], thumbnails[member]
        mark = "<strong class='kept'>keep</strong> " if member in kept else ""
        detail = f"<br><small class='facts'>{esc(details[member])}</small>" if details and member in details else ""
        detail += best_match_html(member, (best_matches or {}).get(member), names, group_of, identical)
        picture = (
            f"<img src='{thumbnail}' alt='{shown(name)}'>"
            if thumbnail.startswith("data:")
            else f"<span class='missing'>{shown(thumbnail)}</span>"
        )
        return (
            f"<figure id='p{member}'><a href='{esc(photo_href(folder / name, report_folder))}'>{picture}</a>"
            f"<figcaption>{mark}{breakable(name)}{detail}</figcaption></figure>"
        )

    def group_html(number: int, members: Sequence[int], pairs: list[tuple[float, int, int]]) -> str:
        pairs.sort(key=lambda row: (row[1:] not in identical, -row[0]))
        scored = [row[0] for row in pairs if row[1:] not in identical]
        copies = len(pairs) - len(scored)
        if len(scored) > 1:
            scores = f"scores {min(scored):.4f}–{max(scored):.4f}"
        else:
            scores = f"score {scored[0]:.4f}" if scored else ""
        if copies:
            scores = ", ".join(filter(None, [plural(copies, IDENTICAL_LABEL, "identical files"), scores]))
        photos = "".join(figure(m) for m in members[:EAGER_PHOTOS])
        if len(members) > EAGER_PHOTOS:
            rest = "".join(figure(m) for m in members[EAGER_PHOTOS:])
            photos += (
                f"<details class='more'><summary>{len(members) - EAGER_PHOTOS:,} more photos of group {number}"
                f"</summary><template><div class='photos'>{rest}</div></template></details>"
            )
        table_rows = "".join(
            f"<tr><td><a href='#p{a}'>{shown(names[a])}</a></td><td><a href='#p{b}'>{shown(names[b])}</a></td>"
            f"<td class='score'>{IDENTICAL_LABEL if (a, b) in identical else f'{score:.6f}'}</td></tr>"
            for score, a, b in pairs[:MAX_PAIR_ROWS]
        )
        listed = f", the best {MAX_PAIR_ROWS} (pairs.csv has all)" if len(pairs) > MAX_PAIR_ROWS else ""
        return (
            f"<details class='group' id='g{number}' open><summary>Group {number:,} · {len(members):,} photos "
            f"<span class='scores'>· {scores}</span></summary>"
            f"<div class='photos'>{photos}</div>"
            f"<details class='pairs'><summary>Pair scores in group {number:,}: {len(pairs):,} "
            f"pair{'s' * (len(pairs) != 1)}{listed}</summary>"
            f"<table><caption>P(same space) of each duplicate pair in group {number:,}, best first</caption>"
            f"<thead><tr><th scope='col'>first photo</th><th scope='col'>second photo</th>"
            f"<th scope='col' class='score'>P(same space)</th></tr></thead><tbody>{table_rows}</tbody></table>"
            f"</details></details>"
        )

    title = f"Duplicate photos in {printable(str(folder))}"
    parts = [
        "<!doctype html>",
        f"<html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>SameSpace: {shown(folder.name or str(folder))}</title><style>{STYLE}</style></head><body>",
        f"<header><h1>{esc(title)}</h1>"
        + "".join(f"<p class='warning' role='alert'>Warning: {shown(w)}</p>" for w in warnings)
        + "<dl class='summary' id='summary'>"
        + "".join(
            f"<div><dt>{shown(str(key))}</dt><dd data-key='{shown(str(key))}'>{esc(_summary_value(value))}</dd></div>"
            for key, value in summary.items()
        )
        + "</dl><p class='note'>Groups of photos the checkpoint scores as the same space, largest first. "
        "Click a thumbnail to open the photo; a group's pair scores are under it"
        + (LOOK_NOTE if borderline else ". ")
        + "duplicates.json and pairs.csv next to this page have every result.</p></header><main>",
    ]
    with atomic_write(path, "w", encoding="utf-8") as handle:  # page by page: the page is never held whole
        handle.write("\n".join(parts))
        for page_number, page in enumerate(pages_of(groups), 1):
            draw([m for n in page for m in groups[n]])  # this page's thumbnails only
            smallest, largest = len(groups[page[-1]]), len(groups[page[0]])
            sizes = f"{smallest:,}–{largest:,}" if smallest != largest else f"{largest:,}"
            which = f"Groups {page[0] + 1:,}–{page[-1] + 1:,}" if len(page) > 1 else f"Group {page[0] + 1:,}"
            body = f"<div class='groups'>{''.join(group_html(n + 1, groups[n], rows[n]) for n in page)}</div>"
            handle.write(
                f"\n<details class='page' id='page{page_number}'{' open' if page_number == 1 else ''}>"
                f"<summary>{which} of {len(groups):,} ({sizes} photos{' each' * (len(page) > 1)})</summary>"
                + (body if page_number == 1 else f"<script type='text/html'>{body}</script>{NO_SCRIPT}")
                + "</details>"
            )
        thumbnails.clear()
        parts = []
        if not groups:
            parts.append("<p id='no-groups'>No duplicates above the threshold.</p>")
        if borderline and threshold is not None:
            parts.append(borderline_html(folder, report_folder, names, borderline, threshold, identical))
        if unreadable:

            def where(skipped: Skipped) -> str:
                return str(skipped.path.relative_to(folder) if skipped.path.is_relative_to(folder) else skipped.path)

            items = "".join(f"<li>{shown(where(s))}: {shown(s.reason)}</li>" for s in unreadable)
            parts.append(
                f"<section class='skipped' id='skipped'><h2>Skipped files ({len(unreadable):,})</h2>"
                f"<ul>{items}</ul></section>"
            )
        parts.append(f"</main><script>{SCRIPT}</script></body></html>")
        handle.write("".join("\n" + part for part in parts) + "\n")
    return path
