"""Pass or fail, decided in the grader's process with the grader's own labkit, from the recorded answers.

Inputs of a check that need only literals and labkit (`layers=labkit.load_config("llama-3.1-70b")[...]`) are
recomputed here, so a notebook that patches labkit gains nothing (the report notes it). Other inputs (a
measurement the notebook made) are taken as recorded. Every step that touches a recorded value is guarded: a
value that upsets a check becomes that exercise's message, never an exception.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass, field

from .escape import display
from .rebuild import CheckSite
from .records import Unreadable, argument
from .results import ExerciseResult

_SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "dict", "float", "int", "len", "list", "max", "min", "range", "round", "sorted", "str", "sum", "tuple")}


def trusted_namespace(master) -> dict:
    """labkit as the master imports it (`from labkit import vram`, `import labkit`...), in the grader."""
    namespace: dict = {}
    for cell in master.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and all(a.name.split(".")[0] == "labkit" for a in node.names) or (
                    isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "labkit"):
                exec(compile(ast.Module([node], []), "<master imports>", "exec"), namespace)  # the master's code
    namespace.pop("__builtins__", None)
    return namespace


def trusted_value(source: str, namespace: dict):
    """(True, value) for an input of the check the grader can compute from literals and labkit alone, else
    (False, None). Kept in the namespace, so a class computes each once."""
    cache = namespace.setdefault("__trusted_values__", {})
    if source not in cache:
        cache[source] = _evaluate_trusted(source, {k: v for k, v in namespace.items() if k != "__trusted_values__"})
    return cache[source]


def _evaluate_trusted(source: str, namespace: dict):
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return False, None
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if not names <= set(namespace) | set(_SAFE_BUILTINS):
        return False, None
    try:
        return True, eval(compile(tree, "<master check>", "eval"), {"__builtins__": _SAFE_BUILTINS, **namespace})
    except Exception:  # noqa: BLE001  an input the grader cannot compute: use the recorded one
        return False, None


@dataclass
class RunFacts:
    """What the run tells the decision about each check site."""

    stopped: str | None = None  # why the run ended early
    completed_sites: set[int] = field(default_factory=set)  # sites whose recording cell ran to its end
    refused: dict[str, int] = field(default_factory=dict)  # exercise id -> calls to its expected answer


def _same(a, b) -> bool:
    from ..check import _close

    try:
        return _close(a, b, 1e-9, 0.0)
    except Exception:  # noqa: BLE001  an odd recorded value: it differs
        return False


def decide_site(s: CheckSite, record: dict | None, namespace: dict, facts: RunFacts, hint: str) -> ExerciseResult:
    from ..check import evaluate

    if record is None:
        if s.site in facts.completed_sites:
            return ExerciseResult(s.exercise_id, "failed", "the check ran but no answer was recorded (the "
                                  "notebook removed or replaced the grader's records file)", hint)
        why = f"not reached: {facts.stopped}" if facts.stopped else "not reached"
        return ExerciseResult(s.exercise_id, "not reached", why, hint)
    result = ExerciseResult(s.exercise_id, "failed", hint=hint)
    context, problems = {}, []
    for name, source in s.input_sources.items():
        trusted, value = trusted_value(source, namespace)
        recorded, got, error = argument(record, name)
        if trusted:
            if recorded and not _same(got, value):
                result.notes.append(f"the notebook changed what `{source}` gives; the grader used labkit's own value")
            context[name] = value
        elif recorded and not isinstance(got, Unreadable):
            context[name] = got
        else:
            problems.append(f"the check's input `{name}` could not be computed: {error or repr(got)}")
    recorded, answer, error = argument(record, "answer")
    if not recorded:
        result.message = f"your answer could not be read: {error}"
    elif problems:
        result.message = "; ".join(problems)
    elif isinstance(answer, Unreadable):
        result.message = f"the answer is {answer.kind}; give a number, a string, a list or a dict"
    else:
        try:
            verdict = evaluate(s.exercise_id, answer, **context)
        except Exception as err:  # noqa: BLE001  a wrong type of answer can upset a validator
            result.message = f"the check could not use your answer: {type(err).__name__}: {display(err, 300)}"
        else:
            result.status = "passed" if verdict.passed else "failed"
            result.message, result.slip = verdict.message, verdict.slip
    return result


def decide(sites: list[CheckSite], records: dict[int, dict], namespace: dict, facts: RunFacts) -> list[ExerciseResult]:
    """Pass or fail for every check site, computed here with this process's labkit."""
    from ..check import exercises

    registry = exercises()
    results = []
    for s in sites:
        hint = registry[s.exercise_id].hint if s.exercise_id in registry else ""
        try:
            result = decide_site(s, records.get(s.site), namespace, facts, hint)
        except Exception as err:  # noqa: BLE001  whatever a record holds, this exercise gets a row
            result = ExerciseResult(s.exercise_id, "failed", f"the grader could not use the recorded answer "
                                    f"({type(err).__name__}: {display(err, 200)})", hint)
        if s.status in ("edited", "deleted"):
            would = "would pass" if result.status == "passed" else "fails"
            result.status = "failed"
            result.message = (f"the check cell was {s.status} in the submission, which counts as failed "
                              f"(restored from the master, the check {would})")
        if s.exercise_id in facts.refused:
            result.notes.append(f"the notebook called labkit's expected answer for {s.exercise_id} "
                                f"{facts.refused[s.exercise_id]} time(s); it is not available while grading")
        results.append(result)
    return results
