"""Student and solution in one run: how `make test` proves every check can fail.

`make test` proves two things of every notebook: it runs as written (nbmake), and in its student version every
check fails with its hint while nothing else breaks. Running each notebook twice doubled CI's time, so the proof
is one run of a *paired* notebook under nbmake plus a static rule:
  - at each exercise the student version of its cells runs first, and its check must raise with a "Hint:";
    then the solution cells run and the check must pass; every other cell runs once, as written;
  - `solution_leaks(nb)`: no later cell reads a name a solution assigns (the student version sets those to
    None), and solutions only assign names (no calls or attribute writes that change other state), so the
    cells after an exercise run the same in both versions.
"""

from __future__ import annotations

import ast
import copy
import textwrap

from ..errors import LabkitError
from .convention import BEGIN, CHECK_CALL, SOLUTION_BLOCK, assigned_names, strip_solutions

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
        found = CHECK_CALL.search(ast.get_source_segment(source, node) or "")
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
    paired = copy.deepcopy(nb)
    cells, pending = [], []  # pending: solution cells since the last check, waiting to run for real
    for cell in paired.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        cell.outputs, cell.execution_count = [], None
        has_solution, has_check = BEGIN in cell.source, bool(CHECK_CALL.search(cell.source))
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
        for match in SOLUTION_BLOCK.finditer(source):
            body = textwrap.dedent(match.group(2))
            for node in ast.parse(body).body:
                plain = isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) or (
                    isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
                    and all(isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.Starred, ast.Store))
                            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                            for n in ast.walk(t)))
                if not plain:
                    problems.append(f"code cell {index}: solution statement changes more than a name: "
                                    f"{ast.get_source_segment(body, node)!r}")
            for name in assigned_names(match.group(2)):
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
