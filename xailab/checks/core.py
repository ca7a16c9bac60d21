"""Shared machinery for lab checks: run the student's function safely (with the library
code that solves the exercise refusing to run), compare with the reference, report in
words (never a bare traceback), reveal hints tier by tier after failed attempts, and
let later cells of a lab say "finish exercise N first" instead of raising.

Under nbgrader (``NBGRADER_EXECUTION`` set) or with ``XAILAB_STRICT_CHECKS=1`` a check
that does not pass raises :class:`CheckFailed`, so autograded cells score zero and
nbval fails on a solution whose check does not pass.

The ``check_*`` functions of the lab modules may run past 60 lines: each reads top to
bottom as the list of mistakes it diagnoses, in the order a student meets them, and
splitting that list would hide the order.
"""
from __future__ import annotations

import json
import os
import traceback
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from ..solving import WriteItYourself, forbidding

HINTS_FILE = Path(__file__).with_name("hints.json")
_ATTEMPTS: Counter = Counter()          # failed checks per exercise (for the hint tiers)
_PASSED: set[str] = set()               # exercises whose check has passed in this session


class CheckFailed(AssertionError):
    """A check did not pass while grading (nbgrader) or in strict mode."""


@lru_cache(maxsize=1)
def exercises() -> dict:
    """``{function name: {"lab", "number", "hints"}}``, written by ``make-labs`` from the
    ``# HINT 1:``, ``# HINT 2:`` ... lines of the solution notebooks."""
    return json.loads(HINTS_FILE.read_text()) if HINTS_FILE.exists() else {}


def strict() -> bool:
    """True while nbgrader grades or validates, or with XAILAB_STRICT_CHECKS=1."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("XAILAB_STRICT_CHECKS") == "1"


def reset() -> None:
    """Forget attempts and passed exercises (a fresh start, as in a new kernel)."""
    _ATTEMPTS.clear()
    _PASSED.clear()


def passed(exercise: str) -> bool:
    return exercise in _PASSED


def label(exercise: str) -> str:
    """'exercise 2a (rise_saliency)' for a function name listed in the hints file."""
    number = exercises().get(exercise, {}).get("number")
    return f"exercise {number} ({exercise})" if number else exercise


def relative_error(got, want) -> float:
    """max |got - want| / max(|want|, tiny): 0 means identical."""
    got = torch.as_tensor(got, dtype=torch.float64)
    want = torch.as_tensor(want, dtype=torch.float64)
    scale = want.abs().max().clamp_min(1e-12)
    return float((got - want).abs().max() / scale)


def in_words(err: float) -> str:
    """A relative error said in words, the CS231n way."""
    if err < 1e-6:
        return f"relative error {err:.1e}: identical up to floating point. Well done!"
    if err < 1e-3:
        return f"relative error {err:.1e}: correct (tiny numerical differences)."
    if err < 1e-1:
        return f"relative error {err:.1e}: close but not equal; look for a missing term or a wrong constant."
    return f"relative error {err:.1e}: not the same result; compare your steps with the lecture's equation."


class Report:
    """Collects verdicts of one check; prints them and tells whether all passed.

    ``exercise`` is the student's function name (the key of its hints); ``forbid``
    lists the ``xailab.solving`` topics that refuse while the student's code runs."""

    def __init__(self, title: str, exercise: str | None = None, forbid=()):
        self.title = title
        self.exercise = exercise
        self.forbid = tuple(forbid)
        self.lines: list[str] = []
        self.passed = True
        self.recorded = False

    def ok(self, msg: str):
        self.lines.append(f"  ✓ {msg}")

    def fail(self, msg: str):
        self.passed = False
        self.lines.append(f"  ✗ {msg}")

    def compare(self, what: str, got, want, tol: float = 1e-4) -> bool:
        """Check shape, then values; record the verdict in words."""
        got_t = torch.as_tensor(got) if not isinstance(got, torch.Tensor) else got
        want_t = torch.as_tensor(want) if not isinstance(want, torch.Tensor) else want
        if tuple(got_t.shape) != tuple(want_t.shape):
            self.fail(f"{what}: shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}")
            return False
        err = relative_error(got_t.detach().cpu(), want_t.detach().cpu())
        (self.ok if err <= tol else self.fail)(f"{what}: {in_words(err)}")
        return err <= tol

    def requires(self, exercise: str) -> bool:
        """Fail with "fix exercise N first" unless ``exercise``'s check has passed."""
        if passed(exercise):
            return True
        self.fail(f"this check uses your {exercise}, whose check has not passed yet: "
                  f"fix {label(exercise)} first, run its check, then run this one again")
        return False

    def record(self) -> list[str]:
        """Remember the verdict once; after a failure return the hints revealed so far."""
        if self.recorded or self.exercise is None:
            return []
        self.recorded = True
        if self.passed:
            _PASSED.add(self.exercise)
            return []
        _PASSED.discard(self.exercise)
        _ATTEMPTS[self.exercise] += 1
        tiers = exercises().get(self.exercise, {}).get("hints", [])
        shown = tiers[:_ATTEMPTS[self.exercise]]
        return [f"  hint {k} of {len(tiers)}: {h}" for k, h in enumerate(shown, 1)]

    def show(self) -> bool:
        hints = self.record()
        head = "PASSED" if self.passed else "NOT YET"
        print(f"{self.title}: {head}")
        print("\n".join(self.lines + hints))
        if hints and len(hints) < len(exercises().get(self.exercise, {}).get("hints", [])):
            print("  (run the check again after a change: another hint appears while it does not pass)")
        if not self.passed and strict():
            raise CheckFailed(f"{self.title}: not passed")
        return self.passed

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return f"<Report {self.title}: {'passed' if self.passed else 'not yet'}>"


def name_of(fn) -> str:
    """The student's function's name, for messages."""
    return getattr(fn, "__name__", "your function")


def finish(report: Report, verbose: bool = True) -> Report:
    """Print the report when ``verbose`` and return it (every check ends with this)."""
    if verbose:
        report.show()
    else:
        report.record()
    return report


def require_tensor(report: Report, fn, got, what: str = "a tensor"):
    """``got`` if it is a tensor; otherwise None after saying in words what came back."""
    if got is None:
        report.fail(f"{name_of(fn)} returned None: did you forget `return`?")
        return None
    if not isinstance(got, torch.Tensor):
        report.fail(f"{name_of(fn)} returned a {type(got).__name__}; expected {what}")
        return None
    return got


def tensor_result(report: Report, fn, got, shape=None, what: str = "a tensor", nan_hint: str = "",
                  shape_hint=None):
    """The student's result as a detached float CPU tensor, or None after recording why
    not in words: None returned, not a tensor, wrong ``shape`` (the message ends with
    ``shape_hint(got)`` when given, else with ``what``), NaN or inf values."""
    if got is None and not report.passed:
        return None                        # the call itself failed and said why
    got = require_tensor(report, fn, got, what)
    if got is None:
        return None
    if shape is not None and tuple(got.shape) != tuple(shape):
        hint = shape_hint(got) if shape_hint else f" ({what})"
        report.fail(f"{name_of(fn)} returned shape {tuple(got.shape)}, expected {tuple(shape)}{hint}")
        return None
    got = got.detach().float().cpu()
    if not torch.isfinite(got).all():
        report.fail(f"{name_of(fn)} returned NaN or inf values{nan_hint}")
        return None
    return got


def diagnose(report: Report, got, alternatives) -> bool:
    """If ``got`` equals one of the known mistakes ``[(result, hint), ...]``, record that
    mistake's hint; True when one matched."""
    for alt, hint in alternatives:
        if alt is not None and alt.shape == got.shape and relative_error(got, alt) < 1e-4:
            report.fail(hint)
            return True
    return False


def _students_line(fn, err: BaseException) -> str:
    """Where in the student's own code ``err`` came from, e.g. ' (your line 7: x = ...)'."""
    frames = traceback.extract_tb(err.__traceback__)
    own = getattr(getattr(fn, "__code__", None), "co_filename", None)
    mine = [f for f in frames if f.filename == own] if own else []
    if not mine:
        mine = [f for f in frames if "site-packages" not in f.filename
                and Path(f.filename).parent.parent != Path(__file__).resolve().parent.parent.parent]
    if not mine:
        return ""
    f = mine[-1]
    return f" (your line {f.lineno}: {(f.line or '').strip()})"


def call(report: Report, fn, *args, **kwargs):
    """Run the student's ``fn`` while the library code that solves this exercise refuses
    to run; on an exception record it in words and return None."""
    try:
        with forbidding(report.forbid):
            return fn(*args, **kwargs)
    except NotImplementedError:
        report.fail(f"{name_of(fn)} is not written yet "
                    "(it still raises NotImplementedError).")
    except WriteItYourself as err:
        report.fail(str(err))
    except Exception as err:  # noqa: BLE001 - students get words, not tracebacks
        report.fail(f"{name_of(fn)} raised {type(err).__name__}: {err}{_students_line(fn, err)}")
    return None


@contextmanager
def needs(*exercise_names: str):
    """For lab cells that use the student's functions: when the cell fails because one of
    them is unfinished (or its check has not passed), print "finish exercise N first"
    instead of a traceback, so Run All reaches the end of the lab.

        with checks.needs("occlusion_sensitivity"):
            maps = occlusion_sensitivity(...)
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - an unfinished exercise is not an error of this cell
        unfinished = [e for e in exercise_names if not passed(e)]
        if not unfinished and not isinstance(err, (NotImplementedError, WriteItYourself)):
            raise
        todo = label(unfinished[0] if unfinished else exercise_names[0])
        print(f"finish {todo} first: this cell uses it "
              f"({type(err).__name__}{': ' + str(err)[:120] if str(err) else ''}). "
              "Once its check passes, run this cell again.")


def degenerate(report: Report, got: torch.Tensor, want: torch.Tensor, inputs=()) -> bool:
    """Name the answers that cannot be right, whatever the exercise: all zeros, a
    constant, one of the inputs returned (nearly) unchanged, or values unrelated to the
    reference (random). Records the verdict and returns True when one matched."""
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    if float(got.abs().max()) == 0 and float(want.abs().max()) > 0:
        report.fail("your function returns all zeros: it computes nothing yet")
        return True
    for value in inputs:
        value = torch.as_tensor(value).detach().double().cpu()
        if value.numel() == got.numel() and value.numel() > 1:
            ref = value.reshape(got.shape)
            c = float((got * ref).sum() / (ref * ref).sum().clamp_min(1e-30))
            if relative_error(got, c * ref) < 1e-2:
                report.fail("your function returns its input (nearly) unchanged"
                            + ("" if abs(c - 1) < 1e-6 else f" (times {c:.3g})"))
                return True
    if got.numel() > 1 and float(got.std()) == 0 and float(want.std()) > 0:
        report.fail(f"your function returns the same value ({float(got.flatten()[0]):.3g}) everywhere")
        return True
    if got.numel() >= 8 and float(want.std()) > 0 and float(got.std()) > 0:
        r = float(torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1])
        if abs(r) < 0.2:
            report.fail(f"your result is unrelated to the expected one (correlation {r:.2f}), as random "
                        "values would be: go back to the equation above the exercise")
            return True
    return False


def roughness(x) -> float:
    """Mean absolute difference of neighbouring pixels (uniform noise: about 0.67)."""
    return float((x[..., 1:] - x[..., :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def unstable(report: Report, fn, args, got, want, what: str, seed_advice: str) -> bool:
    """Run the student's ``fn(*args)`` again: a different image means random values (when
    it is much rougher than ``want``) or a missing seed. Records the verdict; True when
    the two runs differ."""
    again = call(report, fn, *args)
    if again is None or relative_error(again.detach().float().cpu(), got) <= 1e-6:
        return False
    if roughness(got) > 1.5 * roughness(want):
        report.fail(f"{what}: your image is unrelated to the reference and changes from run to run, "
                    "as random values would: build it with the recipe above")
    else:
        report.fail(f"{what}: two runs {seed_advice}")
    return True


def changed_model(report: Report, fn, before, model) -> bool:
    """Fail (and return True) when the student's function left the model changed."""
    changed = before.diff(model)
    if changed:
        report.fail(f"{name_of(fn)} changed the model ({'; '.join(changed)})")
    return bool(changed)
