"""reports.py: output folders are protected, files are written whole, names survive (escaped in
HTML, lossless in JSON and CSV, never run as spreadsheet formulas), the report stays small and
renders in a real browser, and the curves say what they show."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import shutil
import stat
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin, urlparse

import numpy as np
import pytest
from PIL import Image

from conftest import save_exif_rotated
from samespace import reports
from samespace.dedup import Dedup, write_outputs
from samespace.errors import OutputError, printable
from samespace.photos import Skipped

CAFE = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name: not UTF-8, held as a surrogate escape
ODD = "room <b>&'q' #1 100%.jpg"  # HTML and URL metacharacters


def photo(path: Path, colour=(200, 40, 40), size=(64, 48)) -> Path:
    """A small JPEG with some structure (a gradient and a block), saved at ``path`` (str or bytes)."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[...] = colour
    array[:, :, 1] = np.linspace(0, 255, size[0], dtype=np.uint8)
    array[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255
    Image.fromarray(array).save(path, format="JPEG", quality=90)
    return path


def make_cafe(folder: Path) -> Path:
    """The non-UTF-8 name as a real file, created through its bytes."""
    try:
        photo(os.fsencode(folder) + b"/caf\xe9.jpg")
    except OSError as exc:  # e.g. macOS file systems take UTF-8 names only
        pytest.skip(f"this file system refuses non-UTF-8 file names: {exc}")
    return folder / CAFE


VOID = ("area", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr")


class Dom(HTMLParser):
    """Live elements of a page (script and template text is data, not elements)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[str] = []
        self._template = 0
        self._joined = False  # the next text continues the last one (only a <wbr> between them)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if self._template == 0:
            self.elements.append((tag, dict(attrs)))
        self._template += tag == "template"
        if tag not in VOID:  # no end tag follows: text after <wbr> or <br> is still its parent's
            self._open.append(tag)
            self._joined = False
        self._joined = self._joined and tag == "wbr"  # "a_<wbr>b" is one text, "a<br>b" two

    def handle_endtag(self, tag):
        self._template -= tag == "template"
        self._joined = False
        while self._open and self._open.pop() != tag:
            pass

    def handle_data(self, data):
        if self._open and self._template == 0:
            texts = self.texts.setdefault(self._open[-1], [])
            if self._joined:
                texts[-1] += data
            else:
                texts.append(data)
            self._joined = True

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in attrs.items())]


# --------------------------------------------------------------------------------------------
# output folders and atomic writes


def test_output_folder_is_protected(tmp_path):
    folder = reports.prepare_output(tmp_path / "new", force=False)
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(OutputError, match="--force"):
        reports.prepare_output(folder, force=False)
    assert reports.prepare_output(folder, force=True) == folder and (folder / "mine.txt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        reports.prepare_output(tmp_path / "file", force=True)
    with pytest.raises(OutputError, match=r"^cannot create the output folder .*file.*sub"):
        reports.prepare_output(tmp_path / "file" / "sub", force=True)  # a file in the way


def test_atomic_write_is_all_or_nothing(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old, complete")
    with pytest.raises(RuntimeError):
        with reports.atomic_write(target) as handle:
            handle.write("new, half")
            raise RuntimeError("interrupted mid-write")
    assert target.read_text() == "old, complete" and os.listdir(tmp_path) == ["report.html"]

    with reports.atomic_write(target) as handle:
        handle.write("new, complete")
        assert target.read_text() == "old, complete"  # nothing visible until the end
    assert target.read_text() == "new, complete" and os.listdir(tmp_path) == ["report.html"]
    plain = tmp_path / "plain"
    plain.write_text("x")  # what open() gives under this umask, not mkstemp's 0600
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)

    with pytest.raises(OutputError, match=r"^cannot write .*missing.*report\.html"):
        reports.write_json(tmp_path / "missing" / "report.html", {})


def test_a_failing_writer_leaves_no_file(tmp_path):
    with pytest.raises(IndexError):  # a pair index past the names: fails after the header row
        reports.write_pairs_csv(tmp_path / "p.csv", ["a"], np.array([0]), np.array([5]), np.array([0.5]))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# JSON and CSV


def test_pairs_csv_is_sorted_best_first(tmp_path):
    path = reports.write_pairs_csv(
        tmp_path / "p.csv", ["a", "b", "c"], np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.2, 0.9, 0.5])
    )
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))
    assert rows == [
        ["first", "second", "score", "reason", "files"],
        ["a", "c", "0.900000", "model score", "2"],
        ["b", "c", "0.500000", "model score", "2"],
        ["a", "b", "0.200000", "model score", "2"],
    ]


def test_pairs_csv_lists_an_identical_group_once_with_its_count(tmp_path):
    names = [f"copy{k}.jpg" for k in range(5)] + ["other.jpg"]
    path = reports.write_pairs_csv(
        tmp_path / "p.csv", names, np.array([0]), np.array([5]), np.array([0.4]), identical=[[0, 1, 2, 3, 4]]
    )
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))
    assert rows[1:] == [
        ["copy0.jpg", "other.jpg", "0.400000", "model score", "2"],
        ["copy0.jpg", "copy1.jpg", "1.000000", "identical file", "5"],
    ]


def test_csv_names_never_run_as_formulas(tmp_path):
    names = ['=HYPERLINK("x").jpg', "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "\tt.jpg", "\rr.jpg", "'q.jpg", "ok=.jpg"]
    n = len(names)
    path = reports.write_pairs_csv(
        tmp_path / "p.csv", names, np.arange(n), (np.arange(n) + 1) % n, np.linspace(0.9, 0.1, n)
    )
    rows = list(csv.reader(path.open(encoding="utf-8", newline="")))[1:]
    firsts = [row[0] for row in rows]
    assert all(cell.startswith("'") for cell in firsts[:7]) and firsts[7] == "ok=.jpg"
    assert [cell[1:] if cell.startswith("'") else cell for cell in firsts] == names  # one ' off: the name


def test_non_utf8_names_are_lossless_in_json_and_csv(tmp_path):
    names = [CAFE, "café.jpg", ODD]
    path = reports.write_json(tmp_path / "d.json", {CAFE: ["café.jpg"], "skipped": [f"{CAFE}: not an image"]})
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # valid UTF-8 throughout
    assert "\\udce9" in text and "café.jpg" in text  # readable where it can be
    loaded = json.loads(text)
    assert [os.fsencode(key) for key in loaded] == [b"caf\xe9.jpg", b"skipped"]

    path = reports.write_pairs_csv(tmp_path / "p.csv", names, np.array([0, 1]), np.array([2, 0]), np.array([0.9, 0.8]))
    assert b"caf\xe9.jpg" in path.read_bytes()  # the name's own bytes
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[1][:3] == [CAFE, ODD, "0.900000"] and rows[2][:3] == ["café.jpg", CAFE, "0.800000"]


def test_dedup_outputs_are_whole_and_lossless(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_cafe(folder)
    for name in ("a.jpg", "=b.jpg"):
        photo(folder / name)
    result = Dedup(
        [CAFE, "a.jpg", "=b.jpg"], np.array([0, 0, 1]), np.array([1, 2, 2]), np.array([0.9, 0.2, 0.7]), 0.5, "all", 6
    )
    bad = os.fsdecode(b"bad\xff.jpg")
    result.unreadable = [Skipped(folder / bad, f"cannot read {bad}")]
    out = tmp_path / "out"
    summary = write_outputs(result, folder, out, with_scores=True, checkpoint="3f2a")
    assert sorted(os.listdir(out)) == ["duplicates.json", "pairs.csv", "report.html", "summary.json", "to_remove.json"]
    # café~a and a~=b, not café~=b: a star around café (first by name) holds a only
    assert summary["checkpoint"] == "3f2a" and summary["groups"] == 1 and summary["photos in groups"] == 2
    assert json.loads((out / "to_remove.json").read_text(encoding="utf-8")) == ["a.jpg"]
    duplicates = json.loads((out / "duplicates.json").read_text(encoding="utf-8"))
    assert duplicates[CAFE] == [["a.jpg", 0.9]] and duplicates["=b.jpg"] == [["a.jpg", 0.7]]
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert os.fsencode(saved["skipped"][0]).endswith(b"bad\xff.jpg: cannot read bad\xff.jpg")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "caf\\xe9.jpg" in page and "bad\\xff.jpg" in page and "href='caf%E9.jpg'" not in page  # out/ is a sibling
    assert "href='../photos/caf%E9.jpg'" in page


def two_runs(tmp_path: Path) -> tuple[Path, Dedup, Dedup]:
    """A photo folder and two dedup results of it that differ (a pair found, then none)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        photo(folder / name)
    found = Dedup(["a.jpg", "b.jpg"], np.array([0]), np.array([1]), np.array([0.9]), 0.5, "all", 1)
    none = Dedup(["a.jpg", "b.jpg"], np.array([0]), np.array([1]), np.array([0.2]), 0.5, "all", 1)
    return folder, found, none


def tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_dedup_outputs_are_replaced_as_a_set_or_not_at_all(tmp_path, monkeypatch):
    """--force over an earlier run, the disk filling up at the 3rd file: the earlier set stays
    whole (no mix of the two runs), the user's own file stays, and no temporary folder is left."""
    import contextlib
    import errno

    folder, found, none = two_runs(tmp_path)
    out = tmp_path / "out"
    write_outputs(found, folder, out, with_scores=True)
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    real, writes = reports.atomic_write, []

    @contextlib.contextmanager
    def third_write_fills_the_disk(path, *args, **kwargs):
        writes.append(Path(path))
        with real(path, *args, **kwargs) as handle:
            if len(writes) == 3:
                handle.write("half")
                raise OSError(errno.ENOSPC, "No space left on device")
            yield handle

    monkeypatch.setattr(reports, "atomic_write", third_write_fills_the_disk)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        write_outputs(none, folder, out, with_scores=True)
    assert "\n" not in str(caught.value) and len(writes) == 3
    assert tree(out) == before  # the first two new files never reached out/
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos"]  # no temporary folder


@pytest.mark.parametrize("swap", ["renameat2", "two renames"])
def test_a_new_dedup_set_replaces_the_old_whole_and_keeps_the_users_files(tmp_path, monkeypatch, swap):
    folder, found, none = two_runs(tmp_path)
    out = tmp_path / "out"
    write_outputs(none, folder, out, with_scores=True)
    assert json.loads((out / "duplicates.json").read_text())["a.jpg"] == []
    (out / "notes.txt").write_text("mine")
    if swap == "two renames":  # a system without renameat2
        monkeypatch.setattr(reports.ctypes, "CDLL", lambda *args, **kwargs: object())
    write_outputs(found, folder, out, with_scores=True)
    assert json.loads((out / "duplicates.json").read_text())["a.jpg"] == [["b.jpg", 0.9]]
    assert json.loads((out / "summary.json").read_text())["groups"] == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos"]
    assert stat.S_IMODE(out.stat().st_mode) == reports._default_mode(0o777)  # as mkdir makes it
    assert "href='../photos/a.jpg'" in (out / "report.html").read_text()  # links from out/, not the temporary


def test_a_linked_output_folder_stays_a_link_and_its_folder_is_switched(tmp_path):
    folder, found, none = two_runs(tmp_path)
    real = tmp_path / "elsewhere" / "reports"
    write_outputs(none, folder, real, with_scores=True)
    (tmp_path / "out").symlink_to(real, target_is_directory=True)
    write_outputs(found, folder, tmp_path / "out", with_scores=True)
    assert (tmp_path / "out").is_symlink() and json.loads((real / "summary.json").read_text())["groups"] == 1
    assert sorted(p.name for p in real.parent.iterdir()) == ["reports"]


# --------------------------------------------------------------------------------------------
# names in HTML


def test_display_names_escape_only_what_cannot_be_shown():
    assert printable("café ☕.jpg") == "café ☕.jpg"
    assert printable(CAFE) == "caf\\xe9.jpg"
    assert printable("a\nb\tc\u200b.jpg") == "a\\nb\\tc\\u200b.jpg"


def test_photo_links_are_relative_and_percent_encoded(tmp_path):
    report = tmp_path / "out"
    assert (
        reports.photo_href(tmp_path / "photos" / ODD, report)
        == "../photos/room%20%3Cb%3E%26%27q%27%20%231%20100%25.jpg"
    )
    assert reports.photo_href(tmp_path / "photos" / CAFE, report) == "../photos/caf%E9.jpg"
    assert reports.photo_href(tmp_path / "a:b.jpg", tmp_path) == "a%3Ab.jpg"  # never read as a scheme


# --------------------------------------------------------------------------------------------
# report.html


def test_html_escapes_names_and_lists_skipped_files(tmp_path):
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "<script>.jpg")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "b&c.jpg")
    save_exif_rotated(tmp_path / "r.jpg")
    skipped = [Skipped(tmp_path / "bad<1>.jpg", "not an image")]
    page = reports.write_dedup_html(
        tmp_path / "report.html",
        tmp_path,
        ["<script>.jpg", "b&c.jpg", "r.jpg"],
        [[0, 1, 2]],
        {(0, 1): 0.91, (1, 2): 0.55},
        skipped,
        {"photos": 3},
    ).read_text(encoding="utf-8")
    assert "<script>.jpg" not in page and "&lt;script&gt;.jpg" in page and "b&amp;c.jpg" in page
    assert page.count(";base64,") == 3 and "bad&lt;1&gt;.jpg: not an image" in page
    assert page.index("0.910000") < page.index("0.550000")


def test_html_shows_groups_largest_first_in_pages_each_photo_once(tmp_path, monkeypatch):
    monkeypatch.setattr(reports, "GROUPS_PER_PAGE", 2)
    monkeypatch.setattr(reports, "MAX_PAIR_ROWS", 2)
    names = [f"p{i}.jpg" for i in range(14)]
    for name in names:
        photo(tmp_path / name)
    groups = [[0, 1], [2, 3, 4, 5], [6, 7, 8], [9, 10]]  # 11..13 are in no group
    pairs = {(a, b): 0.5 + 0.01 * (a + b) for g in groups for i, a in enumerate(g) for b in g[i + 1 :]}
    page = reports.write_dedup_html(
        tmp_path / "r.html", tmp_path, names, groups, pairs, [], {"photos": 14, "groups": 4}
    )
    text = page.read_text(encoding="utf-8")
    dom = Dom(text)
    assert [a["data-key"] for a in dom.all("dd")] == ["photos", "groups"]  # the summary comes first
    assert text.index("id='summary'") < text.index("id='g1'")
    # Page 1 (groups 1-2, the largest) is live and open; page 2 waits as inert text.
    assert [a["id"] for a in dom.all("details") if (a.get("class") == "page")] == ["page1", "page2"]
    assert "open" in dom.all("details", id="page1")[0] and "open" not in dom.all("details", id="page2")[0]
    live = [a["id"] for a in dom.all("figure")]
    assert live == ["p2", "p3", "p4", "p5", "p6", "p7", "p8"]  # 4 photos, then 3
    assert text.index("id='g3'") > text.index("<script type='text/html'>")
    # Every grouped photo's thumbnail exactly once, none for photos in no group.
    assert text.count(";base64,") == 11 and all(text.count(f"id='p{i}'") == (i < 11) for i in range(14))
    # Pair tables are collapsed and list the best MAX_PAIR_ROWS pairs, scores to 6 decimals.
    pair_boxes = dom.all("details", **{"class": "pairs"})
    assert len(pair_boxes) == 2 and all("open" not in box for box in pair_boxes)
    assert "6 pairs, the best 2 (pairs.csv has all)" in text and text.count("<td class='score'>") == 2 + 2 + 1 + 1
    assert "0.590000<" in text and "0.580000<" in text and "0.550000<" not in text  # best 2 of group 1
    assert "scores 0.5500–0.5900" in text


def test_captions_wrap_at_the_parts_of_names_not_mid_word():
    assert reports.breakable("living_room-2024/IMG_01.jpg") == "living_<wbr>room-<wbr>2024/<wbr>IMG_<wbr>01.<wbr>jpg"
    assert reports.breakable("<b>&'.jpg") == "&lt;b&gt;&amp;&#x27;.<wbr>jpg"  # escaped first; no entity has / _ - .
    assert "break-all" not in reports.STYLE  # which breaks anywhere inside a word
    assert "figcaption{font-size:.72em;line-height:1.25;overflow-wrap:break-word" in reports.STYLE  # fallback only


def test_report_shows_best_matches_and_the_pairs_closest_to_the_threshold(tmp_path):
    names = [f"room_{i}.jpg" for i in range(4)]
    for i, name in enumerate(names):
        photo(tmp_path / name, colour=(60 * i, 40, 40), size=(400, 300))
    best = {0: (1, 0.8), 1: (0, 0.8), 2: (3, 0.52), 3: (2, 0.52)}
    borderline = [(0.52, 2, 3), (0.47, 0, 2)]
    page = reports.write_dedup_html(
        tmp_path / "r.html", tmp_path, names, [[0, 1]], {(0, 1): 0.8}, [], {"photos": 4},
        best_matches=best, borderline=borderline, threshold=0.5,
    ).read_text(encoding="utf-8")  # fmt: skip
    dom = Dom(page)
    grouped = [c for c in dom.texts["small"] if "best match" in c]
    assert grouped == ["best match 0.8000: ", "best match 0.8000: "]  # then a link to the partner
    assert "best match 0.8000: <a href='#p1'>room_<wbr>1.<wbr>jpg</a>" in page
    assert page.index("id='g1'") < page.index("id='borderline'")  # after the groups, linked from the note
    assert "<a href='#borderline'>the pairs closest to the threshold</a>" in page
    verdicts = dom.texts["p"][-2:]
    assert verdicts == ["0.5200 · duplicate (≥ 0.5, +0.0200)", "0.4700 · not a duplicate (< 0.5, -0.0300)"]
    pictures = [img["src"] for img in dom.all("img")][2:]  # after the group's two thumbnails
    assert len(pictures) == 4  # side by side: each pair's two photos
    for uri in pictures:
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as shown:
            assert max(shown.size) == reports.BORDERLINE_SIZE  # readable, not a 96 px thumbnail
    assert "Worth a look: the 2 pairs closest to the threshold 0.5" in page
    close_call = reports.borderline_html(tmp_path, tmp_path, names, [(0.500004, 0, 1)], 0.5)
    assert "0.500004 · duplicate (≥ 0.5, +0.000004)" in close_call  # digits enough to see the gap


def test_thumbnails_are_upright(tmp_path):
    save_exif_rotated(tmp_path / "r.jpg")  # stored 60x40, shown 40x60
    uri = reports.thumbnail_uri(tmp_path / "r.jpg", size=30)
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.size[1] > image.size[0]


def test_report_costs_about_two_kilobytes_a_photo(tmp_path):
    """Real photographs (scikit-learn's samples, cropped): the page of 40 grouped photos stays
    under 2.5 KB a photo, so 10,000 photos stay under 25 MB (the benchmark measures 10,000)."""
    from sklearn.datasets import load_sample_images

    sources = load_sample_images().images
    rng = np.random.default_rng(0)
    names = []
    for i in range(40):
        source = sources[i % 2]
        y, x = rng.integers(0, 150), rng.integers(0, 200)
        names.append(f"listing_{i:05d}.jpg")
        Image.fromarray(source[y : y + 270, x : x + 400]).save(tmp_path / names[-1], quality=90)
    groups = [list(range(k, k + 4)) for k in range(0, 40, 4)]
    pairs = {(g[k], g[k + 1]): 0.9 - 0.1 * k for g in groups for k in range(3)}  # chains of 4
    path = reports.write_dedup_html(tmp_path / "r.html", tmp_path, names, groups, pairs, [], {"photos": 40})
    webp = reports._thumbnail_format()[0] == "WEBP"
    assert path.stat().st_size / 40 < (2_500 if webp else 3_200)  # a Pillow without WebP falls back to JPEG
    uri = Dom(path.read_text(encoding="utf-8")).all("img")[0]["src"]
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumbnail:
        assert max(thumbnail.size) == reports.THUMBNAIL_SIZE


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def rendered_dom(page: Path, fragment: str = "", profile: Path | None = None) -> str:
    """The page's DOM after load in real headless Chromium (scripts run)."""
    command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage"]
    command += [f"--user-data-dir={profile or page.parent / '.chromium'}", "--dump-dom", page.as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium) to render the report")
def test_report_renders_in_chromium(tmp_path, monkeypatch):
    folder = tmp_path / "my photos"
    (folder / "sub dir").mkdir(parents=True)
    make_cafe(folder)
    names = [CAFE, ODD, "=x.jpg", "sub dir/a b.jpg", "gone.jpg", "single.jpg"]
    for name, colour in zip(names[1:], [(20, 90, 200), (20, 160, 40), (240, 200, 0), (0, 0, 0), (9, 9, 9)]):
        photo(folder / name, colour)
    (folder / "gone.jpg").unlink()  # deleted between scoring and report: no preview, no crash
    result = Dedup(
        names,
        np.array([0, 0, 3, 0]),  # café's duplicates odd and =x: a star around café
        np.array([1, 2, 4, 5]),
        np.array([0.97651, 0.93, 0.81234, 0.2]),
        0.5,
        "all",
        30,
        unreadable=[Skipped(folder / "notes.jpg", "cannot read notes.jpg: not an image in a format PIL reads")],
    )
    out = tmp_path / "out"
    monkeypatch.setattr(reports, "BORDERLINE_PAIRS", 0)  # the groups alone (the pairs worth a look: above)
    write_outputs(result, folder, out, with_scores=False, checkpoint="3f2a9c1e")
    page = out / "report.html"
    dom = Dom(rendered_dom(page, profile=tmp_path / "profile"))

    assert [a["data-key"] for a in dom.all("dd")][:6] == [
        "checkpoint",
        "photos",
        "groups",
        "photos in groups",
        "duplicate pairs",
        "skipped files",
    ]
    dd_texts = dom.texts["dd"]
    assert dd_texts[:7] == ["3f2a9c1e", "6", "2", "5", "3", "1", "0.5"]
    groups = [a["id"] for a in dom.all("details", **{"class": "group"})]
    assert groups == ["g1", "g2"]  # largest first: {café, odd, =x} then {sub dir/a b, gone}
    assert [a["id"] for a in dom.all("figure")] == ["p0", "p1", "p2", "p3", "p4"]  # single.jpg: no group
    captions = [text.strip() for text in dom.texts["figcaption"]]  # after the kept photos' "keep" mark
    assert captions == ["caf\\xe9.jpg", ODD, "=x.jpg", "sub dir/a b.jpg", "gone.jpg"]
    assert dom.texts["strong"] == ["keep", "keep"]  # each group's first photo
    assert not dom.all("b")  # the name's <b> stayed text
    assert len(dom.all("img")) == 4 and "no preview" in "".join(dom.texts["span"])
    # Each thumbnail links to its own original, whatever the name's bytes.
    links = [a["href"] for t, a in dom.elements if t == "a" and not a["href"].startswith("#")]
    base = page.as_uri()
    targets = [unquote_to_bytes(urlparse(urljoin(base, href)).path) for href in links]
    assert targets == [os.fsencode(folder / name) for name in names[:5]]
    assert all(os.path.exists(t) for t in targets[:4])
    assert "0.976510" in "".join(dom.texts["td"]) and "scores 0.9300–0.9765" in "".join(dom.texts["span"])
    assert "notes.jpg: cannot read notes.jpg" in "".join(dom.texts["li"])

    # Later pages and a big group's further photos are inert until asked for; a link to them
    # builds and opens what holds them.
    monkeypatch.setattr(reports, "GROUPS_PER_PAGE", 1)
    monkeypatch.setattr(reports, "EAGER_PHOTOS", 2)
    write_outputs(result, folder, out, with_scores=False)
    assert [a["id"] for a in Dom(page.read_text(encoding="utf-8")).all("figure")] == ["p0", "p1"]
    dom = Dom(rendered_dom(page, "#g2", profile=tmp_path / "profile"))
    assert "open" in dom.all("details", id="page2")[0]
    assert [a["id"] for a in dom.all("figure")] == ["p0", "p1", "p3", "p4"]
    dom = Dom(rendered_dom(page, "#p2", profile=tmp_path / "profile"))
    assert [a["id"] for a in dom.all("figure")] == ["p0", "p1", "p2"]
    assert "open" in dom.all("details", **{"class": "more"})[0]


# --------------------------------------------------------------------------------------------
# curves.png


def texts_of(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(lambda artist: hasattr(artist, "get_text"))]


def test_curves_name_the_model_and_draw_chance_and_steps(tmp_path):
    from sklearn.metrics import precision_recall_curve

    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.3, 0.2, 0.1])  # ties: the PR curve must step
    curves = {"balanced": (labels, scores), "one class": (np.ones(4), np.arange(4.0))}
    figure = reports.curves_figure(curves, checkpoint="3f2a9c1e", dataset="Test Data (8 photos)", random_trunk=True)
    roc, pr = figure.axes
    assert figure._suptitle.get_text() == "SameSpace checkpoint 3f2a9c1e on Test Data (8 photos)"
    assert any(text.startswith("Random trunk") for text in texts_of(figure))
    chance = [line for line in roc.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_xdata().tolist() == [0, 1] == chance[0].get_ydata().tolist()
    steps = [line for line in pr.get_lines() if "PR-AUC (average precision)" in line.get_label()]
    assert len(steps) == 1 and steps[0].get_drawstyle() == "steps-post"  # "one class" has no curve
    precision, recall, _ = precision_recall_curve(labels, scores)
    np.testing.assert_array_equal(steps[0].get_xdata(), recall)
    np.testing.assert_array_equal(steps[0].get_ydata(), precision)
    legend = [t.get_text() for t in pr.get_legend().get_texts()]
    assert legend[0].startswith("balanced (PR-AUC (average precision) 0.") and "prevalence 0.500" in legend[1]
    assert not any(" AP " in t or "(AP" in t for t in texts_of(figure))

    plain = reports.curves_figure({"balanced": (labels, scores)})
    assert plain._suptitle.get_text() == "SameSpace" and not any("Random trunk" in t for t in texts_of(plain))
    path = reports.write_curves_png(tmp_path / "c.png", curves, checkpoint="3f2a9c1e", random_trunk=True)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800
    assert os.listdir(tmp_path) == ["c.png"]
