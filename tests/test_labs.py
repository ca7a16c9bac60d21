"""Labs as students and instructors meet them: the library refuses to answer an
exercise while its check runs, hints come in tiers, a fresh lab runs to the end,
solutions pass every check, and nbgrader grades solved, fresh and library-calling
copies as it should."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import xailab
from xailab import course, hooks, models
from xailab.checks import core
from xailab.solving import WriteItYourself, forbidding, solves

ROOT = Path(__file__).resolve().parent.parent
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


# --- the library refuses while a check runs the student's function ---------------

def test_registered_methods_refuse_only_while_forbidden(shapesnet):
    x = xailab.data.shapes("test", 2).images()
    before = hooks.Snapshot.of(shapesnet)
    with forbidding(("gradcam",)):
        with pytest.raises(WriteItYourself, match="write this one yourself"):
            xailab.explain(shapesnet, x, method="gradcam")
        with pytest.raises(WriteItYourself):
            xailab.attribution.cam.gradcam(shapesnet, x)
        assert xailab.explain(shapesnet, x, method="cam").shape == (2, 64, 64)   # not forbidden
    assert before.diff(shapesnet) == []                        # nothing leaked by the refusal
    assert xailab.explain(shapesnet, x, method="gradcam").shape == (2, 64, 64)


def test_solves_tags_any_function_and_forbidding_nests():
    @solves("demo.square")
    def square(v):
        return v * v

    with forbidding(("other",)):
        assert square(3) == 9
        with forbidding(("demo.square",)):
            with pytest.raises(WriteItYourself, match="square"):
                square(3)
        assert square(3) == 9


def test_a_check_turns_a_library_call_into_words(shapesnet):
    from xailab.checks import lab04

    report = lab04.check_gradient(
        lambda m, x, t: xailab.explain(m, x, t, method="gradient", reduce=None), verbose=False)
    assert not report.passed and "write this one yourself" in "\n".join(report.lines)


# --- feedback ----------------------------------------------------------------------

def test_hints_are_revealed_one_tier_per_failed_attempt(monkeypatch, capsys):
    monkeypatch.setattr(core, "exercises", lambda: {"f": {"lab": "lab00", "number": "1",
                                                          "hints": ["first", "second", "third"]}})
    for attempt in (1, 2, 3, 4):
        report = core.Report("demo", exercise="f")
        report.fail("wrong")
        report.show()
        out = capsys.readouterr().out
        assert len(re.findall(r"hint \d of 3", out)) == min(attempt, 3)
    report = core.Report("demo", exercise="f")
    report.ok("right")
    report.show()
    assert "hint 1" not in capsys.readouterr().out and core.passed("f")


def test_strict_mode_and_nbgrader_make_a_failed_check_raise(monkeypatch, capsys):
    report = core.Report("demo", exercise="g")
    report.fail("wrong")
    assert report.show() is False                        # a student sees words only
    for var, value in (("XAILAB_STRICT_CHECKS", "1"), ("NBGRADER_EXECUTION", "autograde")):
        monkeypatch.setenv(var, value)
        with pytest.raises(core.CheckFailed):
            _failed("g").show()
        monkeypatch.delenv(var)


def _failed(exercise):
    r = core.Report("demo", exercise=exercise)
    r.fail("wrong")
    return r


def test_needs_says_finish_exercise_first_and_lets_real_errors_through(monkeypatch, capsys):
    monkeypatch.setattr(core, "exercises", lambda: {"f": {"lab": "lab00", "number": "2b", "hints": []}})

    def unfinished():
        raise NotImplementedError("exercise 2b: write f")

    with core.needs("f"):
        unfinished()
    assert "finish exercise 2b (f) first" in capsys.readouterr().out
    with core.needs("f"):
        undefined_name  # noqa: B018, F821 - a variable from a skipped cell
    assert "finish exercise 2b (f) first" in capsys.readouterr().out
    ok = core.Report("demo", exercise="f")
    ok.ok("right")
    ok.record()
    with pytest.raises(ZeroDivisionError):
        with core.needs("f"):
            1 / 0


def test_an_error_is_reported_at_the_students_own_line():
    def student(x):
        y = x + 1
        return torch.zeros(2) @ torch.zeros(3)     # the student's bug

    report = core.Report("demo")
    assert core.call(report, student, 1) is None
    assert "your line" in report.lines[-1] and "torch.zeros(2) @ torch.zeros(3)" in report.lines[-1]


def test_degenerate_answers_are_named():
    want = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(0))
    x = torch.rand(4, 16, 16)
    for got, words in ((torch.zeros_like(want), "all zeros"), (x.clone(), "unchanged"),
                       (0.5 * x, "unchanged"), (torch.full_like(want, 0.3), "same value"),
                       (torch.randn_like(want), "unrelated")):
        report = core.Report("demo")
        assert core.degenerate(report, got, want, inputs=(x,))
        assert words in report.lines[-1]
    assert not core.degenerate(core.Report("demo"), want + 0.01, want, inputs=(x,))


# --- generating labs -------------------------------------------------------------

def test_strip_solutions_writes_a_stub_and_keeps_hints_out():
    src = ("def f(x):\n    ### BEGIN SOLUTION\n    # HINT 2: the details\n    # HINT 1: the idea\n"
           "    return x * x\n    ### END SOLUTION\n\nprint(1)")
    out = course.strip_solutions(src, stub="exercise 1: write f")
    assert "return x * x" not in out and "HINT" not in out and "    # YOUR CODE HERE" in out
    assert "    raise NotImplementedError('exercise 1: write f')" in out and out.endswith("print(1)")
    assert course.hints_of(src) == ["the idea", "the details"]
    own = course.strip_solutions("### BEGIN SOLUTION\n# STUB: return a float\nx = 1\n### END SOLUTION")
    assert "NotImplementedError('return a float')" in own
    assert course.student_source("# NBVAL_CHECK_OUTPUT\nprint(1)") == "print(1)"
    for broken in ("### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION"):
        with pytest.raises(ValueError):
            course.strip_solutions(broken)


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_every_lab_opens_with_goals_time_done_when_and_its_lecture(path):
    nb = nbformat.read(path, as_version=4)
    head = nb.cells[0].source.lower()
    assert "learning goals" in head and re.search(r"\d+\s*min", head) and "done when" in head
    assert re.search(r"lectures/\d\d_\w+\.ipynb", nb.cells[0].source), "name the lecture it follows"
    text = "\n".join(c.source for c in nb.cells)
    assert "NBVAL" not in text and "XAILAB_MAX_STEPS" not in text, "contributor notes in a student lab"


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_every_exercise_has_tiered_hints_that_are_not_the_solution(path):
    table = core.exercises()
    mine = {k: v for k, v in table.items() if v["lab"] == course.lab_id(path)}
    assert mine, f"no exercises listed for {path.name}"
    for name, entry in mine.items():
        assert len(entry["hints"]) >= 2, f"{name}: give at least two hint tiers"
        assert entry["number"], f"{name}: put it under a '## Exercise N' heading"
        assert all(len(h) < 400 for h in entry["hints"]), f"{name}: a hint that long is the solution"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_the_executed_solutions_pass_every_check(path):
    nb = nbformat.read(path, as_version=4)
    checks = [c for c in nb.cells if c.cell_type == "code" and course.CHECK_CALL.search(c.source)]
    assert checks
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs)
        assert "PASSED" in text and "NOT YET" not in text, f"{cell.source!r} did not pass:\n{text}"


def test_nbgrader_metadata_marks_solutions_checks_and_answers():
    nb = course.grading_metadata(nbformat.read(SOLUTIONS[0], as_version=4))
    kinds = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    assert any(k.get("solution") and not k.get("grade") for k in kinds)
    assert any(k.get("grade") and k.get("locked") and k.get("points") == 1 for k in kinds)
    ids = [k["grade_id"] for k in kinds if k]
    assert len(ids) == len(set(ids))


# --- a fresh lab runs top to bottom ----------------------------------------------

@pytest.mark.parametrize("path", LABS, ids=lambda p: p.name)
def test_a_fresh_lab_runs_to_the_end_and_says_what_to_finish(path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert errors == [], f"Run All on a fresh {path.name} stops with a traceback"
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "not written yet" in printed and "NOT YET" in printed
    assert re.search(r"finish exercise \w+ \(\w+\) first", printed)


# --- grading a class with nbgrader --------------------------------------------------

CHEATS = {   # each exercise answered by calling the library, as a student might try
    "vanilla_gradient": "return xailab.explain(model, x, target, method='gradient', reduce=None)",
    "smoothgrad": "return xailab.attribution.saliency.smoothgrad(model, x, target, n_samples=n_samples, "
                  "noise=noise, reduce=None)",
    "integrated_gradients": "return xailab.explain(model, x, target, method='integrated_gradients', "
                            "baseline=baseline, n_steps=n_steps, reduce=None)",
    "record_activation": "with hooks.record(model, [layer]) as rec:\n        model(x)\n"
                         "    return rec.activations[layer].detach().clone()",
    "layer_heatmap": "return xailab.viz.heatmap(activation, size)",
    "lrp_epsilon_linear": "return xailab.attribution.rules.epsilon(layer, x, relevance, eps)",
    "lrp_epsilon_conv": "return xailab.attribution.rules.epsilon(layer, x, relevance, eps)",
    "my_rollout": "return xailab.attribution.attention.rollout(attentions)",
}


def _cheat(source_nb):
    """The release notebook with every exercise answered by a library call."""
    nb = nbformat.read(source_nb, as_version=4)
    for cell in nb.cells:
        m = re.search(r"^def (\w+)", cell.source, re.M)
        if m and course.BEGIN in cell.source and m.group(1) in CHEATS:
            cell.source = re.sub(rf"{course.BEGIN}.*?{course.END}", "    " + CHEATS[m.group(1)],
                                 cell.source, flags=re.S)
    return nb


def _nbgrader(folder, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("XAILAB_STRICT_CHECKS", None)
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("number", ["02", "04", "09"])
def test_nbgrader_gives_full_points_to_a_solution_and_zero_to_a_fresh_or_library_calling_copy(
        tmp_path, number):
    pytest.importorskip("nbgrader")
    from nbgrader.api import Gradebook

    (source,) = course.grading(tmp_path, [number])
    assignment, name = source.parent.name, source.name
    _nbgrader(tmp_path, "generate_assignment", assignment, "--force")
    release = tmp_path / "release" / assignment / name
    assert "### BEGIN SOLUTION" not in release.read_text()
    copies = {"solved": nbformat.read(source, as_version=4),
              "fresh": nbformat.read(ROOT / "labs" / name, as_version=4),
              "cheat": _cheat(source)}
    assert sum(any(v in c.source for v in CHEATS.values()) for c in copies["cheat"].cells) >= 2
    for student, nb in copies.items():
        folder = tmp_path / "submitted" / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / name)
    _nbgrader(tmp_path, "autograde", assignment, "--force")
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission_notebook(Path(name).stem, assignment, s) for s in copies}
        result = {s: (nb.code_score, nb.max_code_score) for s, nb in scores.items()}
    top = result["solved"][1]
    assert top >= 2 and result == {"solved": (top, top), "fresh": (0, top), "cheat": (0, top)}
