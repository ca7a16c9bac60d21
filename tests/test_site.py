"""The course website builds with one command and works offline in headless Chromium.

Builds the site (``python -m xailab.site``, what ``bash course.sh --site`` runs) from the
committed, executed lectures into a temporary folder, serves it on 127.0.0.1 and opens
the home page and every lecture page with every non-local request blocked: no request
fails, equations are typeset by the local MathJax, every image renders, the syllabus
links each lecture and offers each lab and solution as a download, and searching
"Grad-CAM" finds lecture 05.
"""
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from browsertools import offline_browser, serve
from xailab import site

ROOT = Path(__file__).resolve().parent.parent
LECTURES = sorted((ROOT / "lectures").glob("*.ipynb"))
MATH_DONE = "() => window.MathJax && MathJax.startup && MathJax.startup.promise.then(() => true)"
IMAGES_OK = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"


def _has_math(path: Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "markdown" and "$" in c.source for c in nb.cells)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "site"
    site.build(out)
    return out


def test_home_page_is_the_syllabus_with_downloads(built):
    with serve(built) as base, offline_browser() as browser:
        page = browser.open(f"{base}/index.html")
        assert page.locator("h2:has-text('Syllabus')").count() == 1
        for lecture in LECTURES:
            assert page.locator(f"table a[href='lectures/{lecture.stem}.html']").count() == 1
        downloads = [unquote(h) for h in page.eval_on_selector_all(
            "table a.download", "links => links.map(a => a.getAttribute('href'))")]
        offered = [p for lecture in LECTURES for p in (ROOT / "labs" / lecture.name, ROOT / "solutions" / lecture.name)
                   if p.exists()]
        assert len(downloads) == len(offered) >= len(LECTURES)
        assert all((built / d).is_file() and d.endswith(".ipynb") for d in downloads)
        nav = page.locator("nav.bd-docs-nav a.reference.internal")
        assert nav.count() >= len(LECTURES)            # navigation by lecture
        (ROOT / "build").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "build" / "site-home.png"))
        assert browser.failed == [], browser.failed
        assert browser.errors == [], browser.errors


def test_every_lecture_page_renders_equations_and_images_offline(built):
    with serve(built) as base, offline_browser() as browser:
        for lecture in LECTURES:
            page = browser.open(f"{base}/lectures/{lecture.stem}.html")
            page.wait_for_load_state("load")
            if _has_math(lecture):
                page.wait_for_function(MATH_DONE, timeout=60_000)
                assert page.locator("mjx-container").count() > 0, f"{lecture.name}: no equation typeset"
                assert "$$" not in page.locator("main").inner_text(), f"{lecture.name}: raw LaTeX"
            assert page.locator("main img").count() > 0, f"{lecture.name}: no figure"
            assert page.evaluate(IMAGES_OK), f"{lecture.name}: an image did not load"
            page.close()
        assert browser.failed == [], browser.failed
        assert browser.errors == [], browser.errors


def test_search_for_grad_cam_finds_lecture_05(built):
    with serve(built) as base, offline_browser() as browser:
        page = browser.open(f"{base}/search.html?q=Grad-CAM")
        results = page.locator("#search-results ul.search li a")
        results.first.wait_for(timeout=60_000)
        hrefs = results.evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert any("05_cam" in h for h in hrefs), hrefs
        assert browser.failed == [], browser.failed


def test_solutions_can_be_left_out(tmp_path):
    source = site.stage(tmp_path / "src", solutions="hidden")
    table = (source / "syllabus.md").read_text()
    assert "downloads/labs/02_hooks.ipynb" in table and "solutions" not in table
    assert not (source / "downloads" / "solutions").exists()
    assert len(list((source / "lectures").glob("*.ipynb"))) == len(LECTURES)
    with pytest.raises(ValueError):
        site.stage(tmp_path / "src", solutions="shown")
