"""Exercise checks: `labkit.check("03.kv_bytes", answer)` passes quietly or fails with a hint.

The convention every notebook follows (see notebooks/README.md):

    # Your turn: ...
    ### BEGIN SOLUTION
    answer = ...
    ### END SOLUTION

    check("00.tokens_per_second", answer, tokens=..., seconds=...)

Exercises are registered next to the code they exercise, in the topic modules, with
`@exercise(id, hint=...)` (the function returns the expected answer) or
`@validator(id, hint=...)` (the function returns None when the answer is right, else a message).
The expected answer is always computed by labkit from the same inputs, never hard-coded.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import unknown


@dataclass(frozen=True)
class Exercise:
    id: str
    hint: str
    expected: Callable[..., Any] | None = None
    validate: Callable[..., str | None] | None = None
    rtol: float = 1e-3
    atol: float = 0.0


_EXERCISES: dict[str, Exercise] = {}
_discovered = False


def exercise(exercise_id: str, hint: str, rtol: float = 1e-3, atol: float = 0.0):
    """Register a function that computes the expected answer from the check's keyword arguments."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _EXERCISES[exercise_id] = Exercise(exercise_id, hint, expected=fn, rtol=rtol, atol=atol)
        return fn

    return register


def validator(exercise_id: str, hint: str):
    """Register a function `validate(answer, **context) -> None | str` (a message when wrong)."""

    def register(fn: Callable[..., str | None]) -> Callable[..., str | None]:
        _EXERCISES[exercise_id] = Exercise(exercise_id, hint, validate=fn)
        return fn

    return register


def exercises() -> dict[str, Exercise]:
    """Every registered exercise, after importing the topic modules that define them."""
    global _discovered
    if not _discovered:
        import labkit

        for info in pkgutil.iter_modules(labkit.__path__):
            if not info.name.startswith("_"):
                try:
                    importlib.import_module(f"labkit.{info.name}")
                except ImportError:  # an optional dependency is missing: its exercises stay unavailable
                    pass
        _discovered = True
    return _EXERCISES


def check(exercise_id: str, answer: Any, **context: Any) -> None:
    """Check an answer. Raises AssertionError with the exercise's hint when it is wrong or missing."""
    registry = exercises()
    if exercise_id not in registry:
        raise unknown("exercise", exercise_id, sorted(registry))
    ex = registry[exercise_id]
    if answer is None or answer is Ellipsis:
        raise AssertionError(f"[{ex.id}] no answer yet: replace the placeholder with your code.\nHint: {ex.hint}")
    if ex.validate is not None:
        problem = ex.validate(answer, **context)
    else:
        expected = ex.expected(**context)
        problem = None if _close(answer, expected, ex.rtol, ex.atol) else f"got {_short(answer)}, which is not right"
    if problem:
        raise AssertionError(f"[{ex.id}] {problem}.\nHint: {ex.hint}")
    print(f"✅ [{ex.id}] correct")


def _close(answer: Any, expected: Any, rtol: float, atol: float) -> bool:
    if isinstance(expected, bool) or isinstance(answer, bool):
        return answer == expected
    if isinstance(expected, (int, float)):
        try:
            value = float(answer)
        except (TypeError, ValueError):
            return False
        return math.isclose(value, float(expected), rel_tol=rtol, abs_tol=atol)
    if isinstance(expected, str):
        return isinstance(answer, str) and answer.strip().lower() == expected.strip().lower()
    if isinstance(expected, dict):
        return isinstance(answer, dict) and answer.keys() == expected.keys() and all(
            _close(answer[k], expected[k], rtol, atol) for k in expected)
    if isinstance(expected, (list, tuple)):
        try:
            items = list(answer)
        except TypeError:
            return False
        return len(items) == len(expected) and all(_close(a, e, rtol, atol) for a, e in zip(items, expected))
    return answer == expected


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
