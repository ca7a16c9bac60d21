"""The course as a product: labs in sync, notebook conventions, install files in sync."""
import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest

from xailab import course, models

ROOT = Path(__file__).resolve().parent.parent
LECTURES = sorted((ROOT / "lectures").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_there_is_course_material():
    assert LECTURES and SOLUTIONS


def test_labs_are_generated_from_solutions_and_up_to_date():
    stale = course.make_labs(check=True)
    assert stale == [], "labs/ is stale: run `python -m xailab.course make-labs`"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_every_solution_has_exercises_and_checks(path):
    nb = nbformat.read(path, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert src.count(course.BEGIN) >= 1 and "xailab.checks." in src
    lab = nbformat.read(ROOT / "labs" / path.name, as_version=4)
    lab_src = "\n".join(c.source for c in lab.cells)
    assert course.BEGIN not in lab_src and "NotImplementedError" in lab_src
    assert all(not c.get("outputs") for c in lab.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", LECTURES + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "xailab.setup()" in code[0].source, "first code cell must call xailab.setup()"
    assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") for c in code), "no checked key result"
    assert all(c.execution_count for c in code), "commit notebooks executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == []
    assert path.stat().st_size < 1.5e6, "figures too large: use small figsize and dpi 80"
    if path.parent.name == "lectures":
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
        assert "learning goals" in text and "references" in text
        assert (ROOT / "solutions" / path.name).exists() and (ROOT / "labs" / path.name).exists()


@pytest.mark.parametrize("path", LECTURES, ids=lambda p: p.name)
def test_every_lecture_opens_with_its_time_and_closes_with_takeaways_and_self_checks(path):
    cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
    assert "learning goals" in cells[0].lower()
    assert re.search(r"\*\*Estimated time:\*\* about \d+ minutes", cells[0]), "state the estimated time"
    takeaways = [c for c in cells if c.startswith("## Key takeaways")]
    assert len(takeaways) == 1, "one '## Key takeaways' cell"
    assert 4 <= len(re.findall(r"^- ", takeaways[0], re.M)) <= 6, "4-6 takeaway bullets"
    checks = [c for c in cells if c.startswith("## Check your understanding")]
    assert len(checks) == 1, "one '## Check your understanding' cell"
    answers = re.findall(r"<details>\s*<summary>Answer</summary>.+?</details>", checks[0], re.S)
    assert 2 <= len(answers) <= 3, "2-3 questions, each answer in <details><summary>Answer</summary>"
    assert f"labs/{path.name}" in "\n".join(cells[-3:]), "end by pointing to the lab"


def _names(reqs):
    return sorted(re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in reqs)


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = (ROOT / "environment.yml").read_text()
    pip = [l.strip()[2:] for l in env.split("- pip:")[1].splitlines() if l.strip().startswith("- ")]
    assert sorted(p for p in pip if not p.startswith("-e")) == sorted(wanted)
    assert "torch==2.14.1" in wanted and "torchvision==0.29.1" in wanted
    assert "python=3.11" in env and project["requires-python"] == ">=3.11"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash test.sh" in readme and re.search(r"^bash test.sh$", ci, re.M)
    assert "bash course.sh" in readme and "bash course.sh --execute" in readme


def test_manifest_lists_every_shipped_model():
    manifest = json.loads((ROOT / "data" / "models" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(models.names())
    for name, entry in manifest.items():
        assert models.sha256(models.checkpoint_path(name)) == entry["sha256"]


def test_every_lecture_has_slide_metadata_from_its_headings():
    assert course.slides(check=True) == [], "run `python -m xailab.course slides`"


def test_slide_types_come_from_headings_and_manual_types_are_kept():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_markdown_cell("### Part"),
        nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_markdown_cell("## Next\ntext")])
    nb.cells[2].metadata["slideshow"] = {"slide_type": "fragment"}
    assert course.add_slide_metadata(nb) == 3
    assert [c.metadata.slideshow.slide_type for c in nb.cells] == ["slide", "subslide", "fragment", "slide"]
    assert course.add_slide_metadata(nb) == 0
    assert course.add_slide_metadata(nb, reset=True) == 1 and nb.cells[2].metadata.slideshow.slide_type == "-"


def test_a_lecture_exports_to_reveal_slides(tmp_path):
    lecture = ROOT / "lectures" / "02_hooks.ipynb"
    (out,) = course.export_slides([lecture], out=tmp_path)
    html = out.read_text()
    nb = nbformat.read(lecture, as_version=4)
    n_slides = sum(course.slide_type(c) == "slide" for c in nb.cells)
    assert n_slides >= 5 and html.count("<section") >= n_slides
    assert "reveal" in html.lower() and "Hooks" in html and out.stat().st_size > 50_000
