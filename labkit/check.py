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

When a wrong answer matches a slip, the message names the slip. A validator declares its slips as tests of the
answer, `slips={"forgetting keepdim=True ...": lambda answer, **inputs: ...}` (True when the answer shows that slip).
An answer that is a tuple of numbers names its elements (`labels=("contiguous", "paged")`), so a wrong one says
which element is off. Names are compared without regard to case (`same_name`). A validator that trips over an
oddly shaped answer gives a message, never a traceback. `evaluate(...)` returns the verdict
without raising or printing; `check(...)` raises or prints it, and the class grader calls `evaluate`
in its own process on the answers it recorded (labkit.grading.decide). While a submission is graded it runs
with a sealed copy of labkit (labkit.grading.seal) whose expected answers refuse to be computed.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import unknown

Slip = float | Callable[..., Any]  # a factor applied to the expected answer, or fn(expected, **inputs)
SlipTest = Callable[..., bool]  # a validator's slip: fn(answer, **inputs) -> True when the answer shows it
ANSWER_KINDS = ("number", "numbers", "name")  # what an @exercise expects: one number, a tuple of them, a name

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
    slips: dict[str, Slip | SlipTest] = field(default_factory=dict)
    answer: str = "number"  # one of ANSWER_KINDS (validators: "validated")
    labels: tuple[str, ...] = ()  # the elements' names, for a tuple answer


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
             slips: dict[str, Slip] | None = None, answer: str = "number", labels: Sequence[str] = ()):
    """Register a function that computes the expected answer from the check's keyword arguments.

    `slips` maps a short description of a likely mistake to the value it produces: a number (a factor
    applied to the expected answer) or a function `fn(expected, **inputs)` returning the slipped value.
    `answer` says what is expected ("number", "numbers" for a tuple, "name"); `labels` names a tuple's elements.
    """
    if answer not in ANSWER_KINDS:
        raise unknown("answer kind", answer, ANSWER_KINDS)

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _EXERCISES[exercise_id] = Exercise(exercise_id, hint, expected=fn, rtol=rtol, atol=atol,
                                           slips=dict(slips or {}), answer=answer, labels=tuple(labels))
        return fn

    return register


def validator(exercise_id: str, hint: str, slips: dict[str, SlipTest] | None = None):
    """Register a function `validate(answer, **context) -> None | str` (a message when wrong).

    `slips` maps a likely mistake to a test `fn(answer, **context) -> bool`; when the validator finds the answer
    wrong, the first test that holds names its slip in the message."""

    def register(fn: Callable[..., str | None]) -> Callable[..., str | None]:
        _EXERCISES[exercise_id] = Exercise(exercise_id, hint, validate=fn, slips=dict(slips or {}),
                                           answer="validated")
        return fn

    return register


def same_name(answer: Any, expected: str) -> bool:
    """A name answer ("q4_k_m", " Q4_K_M ") against the expected name: case and surrounding blanks do not count."""
    return isinstance(answer, str) and answer.strip().lower() == expected.strip().lower()


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
        return _validated(ex, answer, context)
    expected = ex.expected(**context)
    if _close(answer, expected, ex.rtol, ex.atol):
        return Verdict(ex.id, True, "", ex.hint)
    slip = _matching_slip(ex, answer, expected, context)
    if isinstance(expected, (list, tuple)):
        message = _which_element(ex, answer, expected)
    else:
        message = f"got {_short(answer)}{_how_far_off(answer, expected, ex.rtol)}"
    if slip:
        message += f". That is the value you get by {slip}"
    return Verdict(ex.id, False, message, ex.hint, slip)


def _validated(ex: Exercise, answer: Any, context: dict[str, Any]) -> Verdict:
    """A validator's verdict. Whatever the answer's shape, the learner gets a message, never a traceback."""
    try:
        problem = ex.validate(answer, **context)
    except Exception as err:  # an answer of the wrong shape or type that the validator did not foresee
        problem = f"your answer could not be used: {type(err).__name__}: {_clip(str(err), 200)}"
    if not problem:
        return Verdict(ex.id, True, "", ex.hint)
    slip = None
    for name, shows in ex.slips.items():
        try:
            if shows(answer, **context):
                slip = name
                break
        except Exception:  # a slip test that does not apply to this answer
            continue
    message = problem + (f". That looks like {slip}" if slip else "")
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
        return f": close (within 10%) but too {side} for the {tolerance_text(rtol)} tolerance"
    factor = ratio if ratio > 1 else 1 / ratio
    size = "large" if ratio > 1 else "small"
    if factor >= 100:
        return f", about 10^{round(math.log10(factor))} times too {size}: check your units"
    return f", about {factor:.2g}x too {size}"


def tolerance_text(rtol: float) -> str:
    """A relative tolerance as the learner reads it: ±1%, ±0.01%, ±0.0001% (never "±0.0%")."""
    return "exact" if rtol <= 0 else f"±{100 * rtol:.2g}%"


def _ordinal(i: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


def _which_element(ex: Exercise, answer: Any, expected: Sequence[Any]) -> str:
    """For a tuple answer: which element is off, and how far (or what is wrong with its shape)."""
    names = ex.labels if len(ex.labels) == len(expected) else tuple(f"element {i + 1}" for i in range(len(expected)))
    shape = f"a tuple of {len(expected)} ({', '.join(names)})"
    if isinstance(answer, (str, bytes, dict)) or not hasattr(answer, "__iter__"):
        return f"got {_short(answer)}, but the answer is {shape}"
    items = list(answer)
    if len(items) != len(expected):
        return f"got {len(items)} value{'s' if len(items) != 1 else ''} ({_short(answer)}), but the answer is {shape}"
    wrong = [i for i, (a, e) in enumerate(zip(items, expected)) if not _close(a, e, ex.rtol, ex.atol)]
    parts = [f"the {_ordinal(i + 1)} ({names[i]}) is {_short(items[i])}{_how_far_off(items[i], expected[i], ex.rtol)}"
             for i in wrong]
    right = [names[i] for i in range(len(expected)) if i not in wrong]
    return "; ".join(parts) + (f" ({', '.join(right)} right)" if right else "")


def _matching_slip(ex: Exercise, answer: Any, expected: Any, context: dict[str, Any]) -> str | None:
    tolerance = max(ex.rtol, 1e-9)  # slips are computed from the same inputs: as tight as the answer itself
    for name, slip in ex.slips.items():
        try:
            value = expected * slip if isinstance(slip, (int, float)) and _number(expected) is not None \
                else slip(expected, **context)
        except Exception:  # a slip that does not apply to these inputs
            continue
        if callable(value) or _close(value, expected, tolerance, 0.0):  # the slip changes nothing here
            continue
        if _close(answer, value, tolerance, ex.atol):
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
    return _clip(repr(value), 80)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
