"""Shared machinery for lab checks: run the student's function safely, compare with
the reference, and report in words (never a bare traceback)."""
from __future__ import annotations

import traceback

import torch


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
    """Collects verdicts of one check; prints them and tells whether all passed."""

    def __init__(self, title: str):
        self.title = title
        self.lines: list[str] = []
        self.passed = True

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

    def show(self) -> bool:
        head = "PASSED" if self.passed else "NOT YET"
        print(f"{self.title}: {head}")
        print("\n".join(self.lines))
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


def call(report: Report, fn, *args, **kwargs):
    """Run the student's ``fn``; on an exception record it in words and return None."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        report.fail(f"{name_of(fn)} is not written yet "
                    "(it still raises NotImplementedError).")
    except Exception as err:  # noqa: BLE001 - students get words, not tracebacks
        tb = traceback.extract_tb(err.__traceback__)
        where = f" (line {tb[-1].lineno}: {tb[-1].line})" if tb else ""
        report.fail(f"{name_of(fn)} raised {type(err).__name__}: {err}{where}")
    return None
