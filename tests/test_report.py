"""The run report (--report run.html): one self-contained HTML file, checked by parsing it and in Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from conftest import IMAGENETTE, make_blobs_store, requires_shared
from pipeline.cli import main

SECTIONS = ("settings", "summary", "learning-curve", "confusion", "per-class", "misclassified")


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


class Page(HTMLParser):
    """Section ids, image sources, figure captions and every URL the page would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.fetches: list[str] = []
        self.captions: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id", ""))
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.fetches.append(a[key])
        if tag == "script":
            self.fetches.append("<script>")
        self._in_caption = tag == "figcaption" or self._in_caption

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions.append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_without_the_photos_lists_them_and_stays_self_contained(tmp_path):
    """Synthetic stores record paths of photos that do not exist: the mistakes are listed without thumbnails."""
    train = make_blobs_store(tmp_path / "train.h5", 400, 8, ["ant", "bee", "cow"])
    test = make_blobs_store(tmp_path / "test.h5", 150, 8, ["ant", "bee", "cow"], seed=1)
    r = invoke("train-incremental", train, "--test", test, "--report", tmp_path / "run.html",
               "--model-out", tmp_path / "m.model", "-q")
    assert r.exit_code == 0, r.output
    page = parse(tmp_path / "run.html")
    assert list(page.sections) == list(SECTIONS)
    assert not page.fetches and all(src.startswith("data:image/png;base64,") for src in page.images)
    text = (tmp_path / "run.html").read_text()
    assert "photo not found" in text and "taken for" in text
    r = invoke("evaluate", tmp_path / "m.model", test, "--report", tmp_path / "eval.html")
    assert r.exit_code == 0 and "report written to" in r.output, r.output
    assert parse(tmp_path / "eval.html").sections == list(SECTIONS)


@pytest.fixture(scope="module")
def incremental_report(imagenette_stores, tmp_path_factory):
    """A class-incremental run on the 10 Imagenette classes (5 tasks of 2) with its report."""
    train, val = imagenette_stores
    out = tmp_path_factory.mktemp("report") / "run.html"
    r = invoke("train-incremental", train, "--test", val, "--head", "nme", "--increment", "2", "--report", out,
               "--no-joint", "-q")
    assert r.exit_code == 0, r.output
    return out


@requires_shared
def test_report_of_a_class_incremental_run_shows_the_photos_behind_the_numbers(incremental_report):
    page = parse(incremental_report)
    assert page.sections == ["settings", "summary", "learning-curve", "accuracy-matrix", *SECTIONS[3:]]
    assert not page.fetches
    thumbs = [s for s in page.images if s.startswith("data:image/jpeg;base64,")]
    assert thumbs and len(thumbs) <= 6 * 8
    text = incremental_report.read_text()
    assert incremental_report.stat().st_size <= 5_000_000  # 10 classes
    # each misclassified photo is captioned "true -> predicted NN%" and its recorded path, under its true class
    captions = re.findall(r"<figcaption><b>([^<]+)</b> &rarr; ([^ ]+) (\d+)%<br><span class=\"path\">([^<]+)</span>",
                          text)
    assert len(captions) == len(thumbs)
    for true, predicted, pct, path in captions:
        assert true != predicted and path.startswith(true + "/") and 0 <= int(pct) <= 100
        assert (IMAGENETTE / "val" / path).is_file()
    # forgetting per class: every class of the first four tasks has a row
    assert len(re.findall(r"<tr><td>[a-z_]+</td><td>[1-5]</td>", text)) == 10


@requires_shared
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Chromium is not installed (apt-get install chromium); the HTML is still checked by parsing")
def test_report_loads_in_headless_chromium_without_console_errors(incremental_report, tmp_path):
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                           incremental_report.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for section in ("Settings and data", "Learning curve", "Accuracy matrix and forgetting",
                    "Held-out confusion matrix", "Per-class precision and recall", "Misclassified held-out photos"):
        assert section in done.stdout
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
