"""The exported slides and HTML open with no network, in headless Chromium.

Every lecture's reveal.js deck (``python -m xailab.course export-slides``) is opened from
``file://`` with every non-local request blocked: reveal.js starts, its equations are
typeset by the local MathJax (no raw ``$$`` left), the right arrow moves to the next slide,
and no request fails. A screenshot of one slide goes to ``build/slides-offline.png``.
The HTML page that ``bash course.sh --execute`` writes is checked the same way.
"""
import re
from pathlib import Path

import nbformat
import pytest

from browsertools import offline_browser
from xailab import course, offline

ROOT = Path(__file__).resolve().parent.parent
LECTURES = sorted((ROOT / "lectures").glob("*.ipynb"))
MATH_DONE = ("() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0"
             " && MathJax.Hub.queue.running === 0")


def _has_math(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "markdown" and "$" in c.source for c in nb.cells)


def _typeset(page) -> int:
    page.wait_for_function(MATH_DONE, timeout=60_000)
    return page.locator(".MathJax_CHTML, .mjx-chtml").count()


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "slides"
    return course.export_slides(LECTURES, out=out)


def test_every_deck_opens_typesets_and_navigates_offline(decks):
    with offline_browser() as browser:
        for lecture, deck in zip(LECTURES, decks):
            page = browser.open(deck.as_uri())
            page.wait_for_selector(".reveal.ready", timeout=30_000)
            math = _typeset(page)
            if _has_math(lecture):
                assert math > 0, f"{deck.name}: no equation was typeset"
            text = page.locator(".slides").inner_text()
            assert "$$" not in text, f"{deck.name}: raw LaTeX left on a slide"
            assert page.evaluate("location.hash") in ("", "#/", "#/0")
            page.keyboard.press("ArrowRight")
            page.wait_for_function("() => location.hash === '#/1'", timeout=10_000)
            assert page.locator("section.present").count() >= 1
            if lecture.name.startswith("05"):
                (ROOT / "build").mkdir(exist_ok=True)
                page.wait_for_timeout(1500)       # let the slide transition finish
                page.screenshot(path=str(ROOT / "build" / "slides-offline.png"))
            page.close()
        assert browser.failed == [], browser.failed
        assert browser.errors == [], browser.errors
    assert (ROOT / "build" / "slides-offline.png").stat().st_size > 5_000


def test_executed_html_renders_equations_offline(tmp_path):
    lecture = ROOT / "lectures" / "05_cam.ipynb"
    nb = nbformat.read(lecture, as_version=4)
    page_path = offline.export_html(nb, tmp_path / "lectures" / "05_cam.html", build=tmp_path)
    html = page_path.read_text()
    assert not re.search(r'<script[^>]+src="https?:', html) and not re.search(r'<link[^>]+href="https?:', html)
    with offline_browser() as browser:
        page = browser.open(page_path.as_uri())
        assert _typeset(page) > 0
        assert "$$S_c" not in page.locator("body").inner_text()
        assert page.locator("img").count() > 0
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert browser.failed == [], browser.failed
        assert browser.errors == [], browser.errors
