"""Library code that answers a lab exercise refuses to run while a check runs the
student's own function for that exercise ("write this one yourself").

A library function is tagged with the exercises it solves; every registered
attribution method is tagged with its registry name automatically:

    @solves("box_iou")
    def box_iou(a, b): ...

A check runs the student's function inside ``forbidding(("box_iou",))``; any call
of a tagged function in that time raises :class:`WriteItYourself`. Outside a check
nothing changes, and the check's own reference runs outside the block.
"""
from __future__ import annotations

import contextvars
import functools
from contextlib import contextmanager

_FORBIDDEN: contextvars.ContextVar[frozenset] = contextvars.ContextVar("xailab_forbidden", default=frozenset())


class WriteItYourself(RuntimeError):
    """Raised when a student's function calls the library code that solves its exercise."""


def refuse(topic: str, what: str | None = None) -> None:
    """Raise :class:`WriteItYourself` when ``topic`` is forbidden right now."""
    if topic in _FORBIDDEN.get():
        raise WriteItYourself(
            f"write this one yourself: your function calls xailab's {what or topic}, which is the answer "
            "to this exercise. Write the method's steps with torch operations instead.")


def solves(*topics: str):
    """Decorator: the function refuses while a check forbids any of ``topics``."""
    def deco(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            for topic in topics:
                refuse(topic)
            return fn(*args, **kwargs)
        guarded.solves = topics
        return guarded
    return deco


@contextmanager
def forbidding(topics):
    """While inside, the library code tagged with any of ``topics`` refuses to run."""
    token = _FORBIDDEN.set(_FORBIDDEN.get() | frozenset(topics))
    try:
        yield
    finally:
        _FORBIDDEN.reset(token)
