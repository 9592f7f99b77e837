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

A wrong number says how far off it is (coarsely, so the message never hands out the answer), and
an exercise can declare the slips learners often make, each as the value that slip produces:

    @exercise("01.kv_bytes_per_token", hint=..., slips={
        "counting only K or only V (the cache holds both)": 0.5,       # a factor of the expected answer
        "using the query heads instead of the KV heads": lambda expected, config, **_: ...,
    })

When a wrong answer matches a slip, the message names the slip. `evaluate(...)` returns the verdict
without raising or printing; `check(...)` raises or prints it, and the class grader calls `evaluate`
in its own process on the answers it recorded (labkit.grading.decide). While a submission is graded it runs
with a sealed copy of labkit (labkit.grading.seal) whose expected answers refuse to be computed.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import unknown

Slip = float | Callable[..., Any]  # a factor applied to the expected answer, or fn(expected, **inputs)

# Slips many numeric exercises share, ready to pass in `slips=`.
GB_FOR_GIB = {"dividing by 1e9 (GB) where the exercise asks for GiB (2**30 bytes)": 2**30 / 1e9}
GIB_FOR_GB = {"dividing by 2**30 (GiB) where the exercise asks for GB (1e9 bytes)": 1e9 / 2**30}
BITS_FOR_BYTES = {"counting bits where bytes are asked (or forgetting to divide the bits by 8)": 8.0,
                  "dividing by 8 twice: the value was already in bytes": 1 / 8}


@dataclass(frozen=True)
class Exercise:
    id: str
    hint: str
    expected: Callable[..., Any] | None = None
    validate: Callable[..., str | None] | None = None
    rtol: float = 1e-3
    atol: float = 0.0
    slips: dict[str, Slip] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """What a check decided: passed or not, and the message the learner sees."""
    exercise_id: str
    passed: bool
    message: str
    hint: str
    slip: str | None = None

    def __str__(self) -> str:
        if self.passed:
            return f"✅ [{self.exercise_id}] correct"
        return f"[{self.exercise_id}] {self.message}.\nHint: {self.hint}"


_EXERCISES: dict[str, Exercise] = {}
_discovered = False
_SEALED = False  # True in the copy of labkit a submission runs with while it is graded (labkit.grading.seal)


def exercise(exercise_id: str, hint: str, rtol: float = 1e-3, atol: float = 0.0,
             slips: dict[str, Slip] | None = None):
    """Register a function that computes the expected answer from the check's keyword arguments.

    `slips` maps a short description of a likely mistake to the value it produces: a number (a factor
    applied to the expected answer) or a function `fn(expected, **inputs)` returning the slipped value.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _EXERCISES[exercise_id] = Exercise(exercise_id, hint, expected=fn, rtol=rtol, atol=atol,
                                           slips=dict(slips or {}))
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


def evaluate(exercise_id: str, answer: Any, **context: Any) -> Verdict:
    """Decide whether an answer is right, without printing or raising (the grader uses this)."""
    registry = exercises()
    if exercise_id not in registry:
        raise unknown("exercise", exercise_id, sorted(registry))
    ex = registry[exercise_id]
    if answer is None or answer is Ellipsis:
        return Verdict(ex.id, False, "no answer yet: replace the placeholder with your code", ex.hint)
    if ex.validate is not None:
        problem = ex.validate(answer, **context)
        return Verdict(ex.id, not problem, problem or "", ex.hint)
    expected = ex.expected(**context)
    if _close(answer, expected, ex.rtol, ex.atol):
        return Verdict(ex.id, True, "", ex.hint)
    slip = _matching_slip(ex, answer, expected, context)
    message = f"got {_short(answer)}{_how_far_off(answer, expected, ex.rtol)}"
    if slip:
        message += f". That is the value you get by {slip}"
    return Verdict(ex.id, False, message, ex.hint, slip)


def check(exercise_id: str, answer: Any, **context: Any) -> None:
    """Check an answer. Raises AssertionError with the exercise's hint when it is wrong or missing."""
    if _SEALED:  # being graded: the grader decides from the recorded answer, after the run
        print(f"[{exercise_id}] the grader checks this answer after the run")
        return
    verdict = evaluate(exercise_id, answer, **context)
    if not verdict.passed:
        raise AssertionError(str(verdict))
    print(verdict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _how_far_off(answer: Any, expected: Any, rtol: float) -> str:
    """A coarse distance ('about 2x too large', 'within 10% but too low'), never the answer itself."""
    got, want = _number(answer), _number(expected)
    if got is None or want is None or isinstance(expected, bool):
        return ", which is not right"
    if want == 0:
        return f", but the answer is zero (yours is {'above' if got > 0 else 'below'})"
    ratio = got / want
    if ratio <= 0:
        return ", which has the wrong sign" if ratio < 0 else ", but the answer is not zero"
    side = "high" if ratio > 1 else "low"
    if 0.9 < ratio < 1.1:
        return f": close (within 10%) but too {side} for the ±{rtol:.1%} tolerance"
    factor = ratio if ratio > 1 else 1 / ratio
    size = "large" if ratio > 1 else "small"
    if factor >= 100:
        return f", about 10^{round(math.log10(factor))} times too {size}: check your units"
    return f", about {factor:.2g}x too {size}"


def _matching_slip(ex: Exercise, answer: Any, expected: Any, context: dict[str, Any]) -> str | None:
    got, want = _number(answer), _number(expected)
    if got is None or want is None:
        return None
    tolerance = max(ex.rtol, 1e-3)
    for name, slip in ex.slips.items():
        try:
            value = want * slip if isinstance(slip, (int, float)) else slip(expected, **context)
        except Exception:  # a slip that does not apply to these inputs
            continue
        value = _number(value)
        if value is None or math.isclose(value, want, rel_tol=tolerance):  # the slip changes nothing here
            continue
        if math.isclose(got, value, rel_tol=tolerance, abs_tol=ex.atol):
            return name
    return None


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
