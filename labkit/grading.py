"""Student versions and grading for the exercise convention (see notebooks/README.md).

- `student_version(nb)`: each `### BEGIN SOLUTION ... ### END SOLUTION` block becomes
  `# YOUR CODE HERE` plus `name = None` for every variable the solution assigned.
- `grade(path)`: execute a notebook (errors allowed) and report, per `check(...)` cell, whether
  it passed, failed (with the hint) or was never reached; other errors are reported as broken cells.
"""

from __future__ import annotations

import ast
import builtins
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabkitError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.\-]+)["']""")
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n(.*?)^[ \t]*{re.escape(END)}[^\n]*$", re.M | re.S)


def _assigned_names(code: str) -> list[str]:
    """Top-level names a solution assigns (in order), so the student version can set them to None."""
    try:
        tree = ast.parse(_dedent(code))
    except SyntaxError as err:
        raise LabkitError(f"a solution block is not valid Python: {err}") from err
    names: list[str] = []
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and n.id not in names:
                    names.append(n.id)
    return names


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


def strip_solutions(source: str) -> str:
    """The cell source with every solution block replaced by a placeholder."""
    def replace(match: re.Match) -> str:
        indent, body = match.group(1), match.group(2)
        lines = [f"{indent}# YOUR CODE HERE"] + [f"{indent}{name} = None" for name in _assigned_names(body)]
        return "\n".join(lines)

    if source.count(BEGIN) != source.count(END):
        raise LabkitError(f"unbalanced solution markers: every '{BEGIN}' needs an '{END}'")
    return _BLOCK.sub(replace, source)


def student_version(nb):
    """A copy of a notebook (nbformat node) with solutions stripped and outputs cleared."""
    import copy

    student = copy.deepcopy(nb)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
    return student


def exercise_ids(nb) -> list[str]:
    """The exercise ids checked in a notebook, in order."""
    return [m for cell in nb.cells if cell.cell_type == "code" for m in _CHECK_CALL.findall(cell.source)]


@dataclass
class GradeReport:
    notebook: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id -> message (with hint)
    not_reached: list[str] = field(default_factory=list)
    broken_cells: list[str] = field(default_factory=list)  # errors outside check cells

    @property
    def score(self) -> str:
        total = len(self.passed) + len(self.failed) + len(self.not_reached)
        return f"{len(self.passed)}/{total}"

    def __str__(self) -> str:
        lines = [f"{self.notebook}: {self.score} exercises passed"]
        lines += [f"  ✅ {i}" for i in self.passed]
        lines += [f"  ❌ {i}: {msg.splitlines()[-1] if msg else ''}" for i, msg in self.failed.items()]
        lines += [f"  ⏸  {i}: not reached" for i in self.not_reached]
        lines += [f"  💥 {b}" for b in self.broken_cells]
        return "\n".join(lines)


def grade_executed(nb, name: str = "notebook") -> GradeReport:
    """Read the outputs of an executed notebook into a GradeReport."""
    report = GradeReport(name)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        ids = _CHECK_CALL.findall(cell.source)
        error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
        executed = cell.get("execution_count") is not None
        if ids:
            for ex_id in ids:
                text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
                if f"✅ [{ex_id}]" in text:
                    report.passed.append(ex_id)
                elif error is not None and error.get("ename") == "AssertionError":
                    report.failed[ex_id] = error.get("evalue", "")
                elif error is not None:
                    report.failed[ex_id] = f"{error.get('ename')}: {error.get('evalue')}"
                    report.broken_cells.append(f"cell {index}: {error.get('ename')}: {error.get('evalue')}")
                else:
                    report.not_reached.append(ex_id) if not executed else report.failed.setdefault(ex_id, "no result")
        elif error is not None:
            report.broken_cells.append(f"cell {index}: {error.get('ename')}: {error.get('evalue')}")
    return report


def execute(nb, cwd: str | Path, timeout: int = 600, kernel_name: str = "python3"):
    """Run every cell (errors allowed, so one failing check does not hide the rest)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


# =============================================================================== one run, both versions
#
# `make test` proves two things of every notebook: it runs as written (nbmake), and in its student version
# every check fails with its hint while nothing else breaks. Running each notebook twice doubled CI's time, so
# the proof is one run of a *paired* notebook under nbmake plus a static rule:
#   - at each exercise the student version of its cells runs first, and its check must raise with a "Hint:";
#     then the solution cells run and the check must pass; every other cell runs once, as written;
#   - `solution_leaks(nb)`: no later cell reads a name a solution assigns (the student version sets those to
#     None), and solutions only assign names (no calls or attribute writes that change other state), so the
#     cells after an exercise run the same in both versions.

_EXPECT_FAILURE = """try:
{body}
except AssertionError as _labkit_failure:
    assert "Hint:" in str(_labkit_failure), f"{ex_id} failed without its hint: {{_labkit_failure}}"
    print("student version: {ex_id} fails with its hint, as it should")
else:
    raise AssertionError("{ex_id}: the check passed with the solution stripped")"""


def _first_check_statement(source: str) -> tuple[int, int, str] | None:
    """(first line, last line, exercise id) of the first top-level statement that calls check(...)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        found = _CHECK_CALL.search(ast.get_source_segment(source, node) or "")
        if found:
            return node.lineno, node.end_lineno, found.group(1)
    return None


def expect_check_failure(source: str) -> str:
    """A check cell as its student version runs it: the statements up to its first check, the check wrapped so
    that it must raise AssertionError with a hint (and the run goes on), nothing after it (the student's run
    stops at the failing check)."""
    found = _first_check_statement(source)
    if found is None:
        raise LabkitError(f"no check(...) statement to expect a failure from in:\n{source}")
    first, last, ex_id = found
    lines = source.splitlines()
    body = "\n".join("    " + line for line in lines[first - 1:last])
    return "\n".join(lines[:first - 1] + [_EXPECT_FAILURE.format(body=body, ex_id=ex_id)])


def paired_version(nb):
    """A copy of a notebook where every exercise runs twice in one kernel: first as the student gets it (its
    check must fail with the hint), then with the solution (its check must pass). Outputs cleared."""
    import copy

    paired = copy.deepcopy(nb)
    cells, pending = [], []  # pending: solution cells since the last check, waiting to run for real
    for cell in paired.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        cell.outputs, cell.execution_count = [], None
        has_solution, has_check = BEGIN in cell.source, bool(_CHECK_CALL.search(cell.source))
        if not has_solution and not has_check:
            cells.append(cell)
            continue
        student = copy.deepcopy(cell)
        student.source = strip_solutions(cell.source)
        student.id = f"{cell.get('id', 'cell')}-student"[:64]
        if has_check:
            student.source = expect_check_failure(student.source)
        cells.append(student)
        if has_solution:
            pending.append(cell)
        if has_check:
            cells.extend(c for c in pending if c is not cell)
            cells.append(cell)
            pending = []
    if pending:
        raise LabkitError(f"a solution with no check(...) after it (cell id {pending[0].get('id')}): every exercise "
                          "needs its check cell")
    paired.cells = cells
    return paired


def solution_leaks(nb) -> list[str]:
    """Why the student version of `nb` could run differently from the solution after an exercise; [] if not.

    Flags (a) a later cell that reads a name a solution block assigns, outside the check cell (whose student
    run stops at the failing check), and (b) a solution statement that is not a plain name assignment or a
    definition (a call or an attribute write could change state the later cells use)."""
    problems, assigned = [], {}
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        source = cell.source
        for match in _BLOCK.finditer(source):
            body = _dedent(match.group(2))
            for node in ast.parse(body).body:
                plain = isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) or (
                    isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                    and all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Starred, ast.Store))
                            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                            for n in ast.walk(t)))
                if not plain:
                    problems.append(f"code cell {index}: solution statement changes more than a name: "
                                    f"{ast.get_source_segment(body, node)!r}")
            for name in _assigned_names(match.group(2)):
                assigned.setdefault(name, index)
        if BEGIN in source or not assigned:
            continue
        runs_in_student = source
        found = _first_check_statement(source)
        if found is not None:
            runs_in_student = "\n".join(source.splitlines()[:found[0] - 1])
        try:
            tree = ast.parse(runs_in_student)
        except SyntaxError:  # IPython magics (%pip): no Python names to read
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in assigned:
                problems.append(f"code cell {index} reads {node.id!r}, which the solution in code cell "
                                f"{assigned[node.id]} assigns (None in the student version)")
    return problems


def grade(path: str | Path, timeout: int = 600) -> GradeReport:
    """Execute a submitted notebook and grade its checks."""
    import nbformat

    path = Path(path)
    if path.suffix != ".ipynb" or not path.is_file():
        raise LabkitError(f"{path} is not a notebook file; grade takes .ipynb files")
    nb = nbformat.read(path, as_version=4)
    execute(nb, cwd=path.parent, timeout=timeout)
    return grade_executed(nb, path.name)


# =============================================================================== grading a class
#
# `labkit grade SUBMISSIONS --master NOTEBOOKS` (labkit.class_grading) runs every submission under
# nbmake. Before that, each submission is rebuilt here from the master notebook:
#   - cells are matched by id; set-up cells the student deleted come back from the master, solution
#     cells they deleted come back blank (the student version), cells they added stay where they were;
#   - every check cell is restored from the master and replaced by a *recording* cell: it evaluates the
#     check's answer and arguments in the student's kernel and appends them, as plain JSON, to a
#     records file. It never raises, so a wrong or blank exercise does not stop the run;
#   - tags and metadata are dropped, so nothing can skip or excuse a cell (skip-execution,
#     raises-exception, per-cell timeouts); the notebook's own metadata is replaced by the grader's.
# Pass or fail is then decided in the grader's process (`decide`), with its own labkit.

CHECK_FUNCTION = "check"

# Runs inside the student's kernel, at the top of every recording cell (so an earlier cell cannot
# replace it). Turns values into JSON: numbers, strings, lists, dicts, numpy/torch arrays; anything
# else is recorded as unreadable. The grader never unpickles or executes what comes back.
RECORDER = '''\
def __labkit_record(records_path, nonce, site, exercise, arguments):
    import json, math
    def plain(value, depth=0):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return value if abs(value) < 2**63 else float(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if depth > 20:
            return {"__unreadable__": "nested too deeply"}
        if hasattr(value, "tolist") and hasattr(value, "shape"):
            size = 1
            for n in value.shape:
                size *= int(n)
            return plain(value.tolist(), depth + 1) if size <= 100_000 else {"__unreadable__": "array too large"}
        if isinstance(value, (list, tuple)) and len(value) <= 100_000:
            return [plain(v, depth + 1) for v in value]
        if isinstance(value, dict) and len(value) <= 10_000:
            return {str(k): plain(v, depth + 1) for k, v in value.items()}
        return {"__unreadable__": type(value).__name__}
    recorded = {}
    for name, thunk in arguments:
        try:
            recorded[name] = {"value": plain(thunk())}
        except BaseException as err:  # the learner's code: record the error, never raise
            recorded[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    line = json.dumps({"nonce": nonce, "site": site, "exercise": exercise, "arguments": recorded})
    with open(records_path, "a", encoding="utf-8") as f:
        f.write(line + "\\n")
    print(f"[{exercise}] answer recorded for grading")
'''


@dataclass
class CheckSite:
    """One check(...) call of the master notebook, as the grader runs it."""

    site: int  # position among the master's check calls
    exercise_id: str
    cell_id: str
    answer_source: str
    input_sources: dict[str, str]  # keyword -> expression, from the master's source
    status: str = "restored"  # "intact", or "edited" / "deleted" in the submission (counts as failed)


def check_sites(master) -> list[CheckSite]:
    """Every check call of a master notebook, in order, with the source of its answer and inputs."""
    sites: list[CheckSite] = []
    for cell in master.cells:
        if cell.cell_type != "code" or not _CHECK_CALL.search(cell.source):
            continue
        source = cell.source
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise LabkitError(f"the master's check cell {cell.get('id')} is not valid Python: {err}") from err
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_check(node.func) and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            if len(node.args) != 2 or any(k.arg is None for k in node.keywords):
                raise LabkitError(f"check cell {cell.get('id')}: grading needs check(id, answer, name=value, ...)")
            sites.append(CheckSite(len(sites), node.args[0].value, cell.get("id"),
                                   ast.get_source_segment(source, node.args[1]),
                                   {k.arg: ast.get_source_segment(source, k.value) for k in node.keywords}))
    return sites


def _is_check(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == CHECK_FUNCTION) or (
        isinstance(func, ast.Attribute) and func.attr == CHECK_FUNCTION)


def recording_cell(sites: list[CheckSite], records_path: str, nonce: str) -> str:
    """The source that replaces a master check cell: records each check's answer and inputs."""
    lines = ["# Restored from the master by the grader: records this check's answer for grading.", RECORDER]
    for s in sites:
        arguments = [f"('answer', lambda: ({s.answer_source}))"]
        arguments += [f"({name!r}, lambda: ({src}))" for name, src in s.input_sources.items()]
        lines.append(f"__labkit_record({records_path!r}, {nonce!r}, {s.site}, {s.exercise_id!r}, "
                     f"[{', '.join(arguments)}])")
    return "\n".join(lines)


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def prepare_submission(master, submission, records_path: str, nonce: str, cell_timeout: int):
    """The notebook the grader runs for one submission, and the master's check sites with their status.

    `submission` may be None (nothing handed in): the student version of the master is run.
    """
    import nbformat

    sites = check_sites(master)
    sites_by_cell: dict[str, list[CheckSite]] = {}
    for s in sites:
        sites_by_cell.setdefault(s.cell_id, []).append(s)
    theirs = list(submission.cells) if submission is not None else list(student_version(master).cells)
    their_ids = {c.get("id"): c for c in theirs}
    their_sources = {_normalized(c.source) for c in theirs if c.cell_type == "code"}
    master_ids = {c.get("id") for c in master.cells}

    # the student's own extra cells stay after the master cell they followed
    added_after: dict[str | None, list] = {}
    anchor = None
    for c in theirs:
        if c.get("id") in master_ids:
            anchor = c.get("id")
        elif c.cell_type in ("code", "markdown"):
            added_after.setdefault(anchor, []).append(c)

    def clean(cell):
        make = nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell
        return make(cell.source, id=cell.get("id"))  # no tags, no metadata, no outputs

    cells = [clean(c) for c in added_after.get(None, [])]
    for m in master.cells:
        mid = m.get("id")
        if mid in sites_by_cell:
            mine = their_ids.get(mid)
            if mine is not None and mine.cell_type == "code" and _normalized(mine.source) == _normalized(m.source):
                status = "intact"
            elif mine is None and _normalized(m.source) in their_sources:
                status = "intact"  # same check, new id (a notebook saved by an old Jupyter)
            else:
                status = "deleted" if mine is None else "edited"
            for s in sites_by_cell[mid]:
                s.status = status
            cells.append(nbformat.v4.new_code_cell(recording_cell(sites_by_cell[mid], records_path, nonce), id=mid))
        elif mid in their_ids:
            if their_ids[mid].cell_type in ("code", "markdown"):
                cells.append(clean(their_ids[mid]))
        elif m.cell_type == "code":
            source = strip_solutions(m.source)  # a deleted solution comes back blank, set-up code as it was
            cells.append(nbformat.v4.new_code_cell(source, id=mid))
        cells.extend(clean(c) for c in added_after.get(mid, []))

    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"},
                   "execution": {"allow_errors": True, "timeout": cell_timeout}}
    return nb, sites


@dataclass
class ExerciseResult:
    """How one exercise of one submission was graded."""

    exercise_id: str
    status: str  # "passed", "failed", "not reached" or "missing"
    message: str = ""
    hint: str = ""
    slip: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def points(self) -> int:
        return int(self.status == "passed")


class _Unreadable:
    def __init__(self, kind: str):
        self.kind = kind

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        if set(value) == {"__unreadable__"}:
            return _Unreadable(value["__unreadable__"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def read_records(path: str | Path, nonce: str, max_bytes: int = 5_000_000) -> dict[int, dict]:
    """The recorded check arguments by site (the first record of each site wins)."""
    import json

    path = Path(path)
    records: dict[int, dict] = {}
    if not path.is_file():
        return records
    with path.open("rb") as f:
        data = f.read(max_bytes)
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce and isinstance(record.get("site"), int):
            records.setdefault(record["site"], record)
    return records


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


def _trusted_value(source: str, namespace: dict):
    """Evaluate an input of the check in the grader when it needs only literals and labkit (once per
    master namespace: the values are kept in it, so a class of 100 computes them once)."""
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


def decide(sites: list[CheckSite], records: dict[int, dict], namespace: dict,
           stopped: str | None = None) -> list[ExerciseResult]:
    """Pass or fail for every check site, computed here with this process's labkit."""
    from .check import _close, evaluate, exercises

    registry = exercises()
    results = []
    for s in sites:
        hint = registry[s.exercise_id].hint if s.exercise_id in registry else ""
        record = records.get(s.site)
        if record is None:
            why = f"not reached: {stopped}" if stopped else "not reached"
            results.append(ExerciseResult(s.exercise_id, "not reached", why, hint))
            continue
        result = ExerciseResult(s.exercise_id, "failed", hint=hint)
        arguments = record.get("arguments", {})
        answer = arguments.get("answer", {})
        context, problems = {}, []
        for name, source in s.input_sources.items():
            trusted, value = _trusted_value(source, namespace)
            recorded = arguments.get(name, {})
            if trusted:
                if "value" in recorded and not _close(_from_json(recorded["value"]), value, 1e-9, 0.0):
                    result.notes.append(f"the notebook changed what `{source}` gives; the grader used labkit's own value")
                context[name] = value
            elif "value" in recorded:
                context[name] = _from_json(recorded["value"])
            else:
                problems.append(f"the check's input `{name}` could not be computed: {recorded.get('error', 'missing')}")
        if "error" in answer:
            result.message = f"your answer could not be read: {answer['error']}"
        elif problems:
            result.message = "; ".join(problems)
        elif isinstance(_from_json(answer.get("value")), _Unreadable):
            result.message = (f"the answer is a {_from_json(answer['value']).kind}; give a number, a string, "
                              "a list or a dict")
        else:
            try:
                verdict = evaluate(s.exercise_id, _from_json(answer.get("value")), **context)
            except Exception as err:  # noqa: BLE001  a wrong type of answer can upset a validator
                result.message = f"the check could not use your answer: {type(err).__name__}: {err}"
            else:
                result.status = "passed" if verdict.passed else "failed"
                result.message, result.slip = verdict.message, verdict.slip
        if s.status in ("edited", "deleted"):
            would = "would pass" if result.status == "passed" else "fails"
            result.status = "failed"
            result.message = (f"the check cell was {s.status} in the submission, which counts as failed "
                              f"(restored from the master, the check {would})")
        results.append(result)
    return results
