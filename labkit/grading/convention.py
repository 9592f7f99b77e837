"""The exercise convention every notebook follows (notebooks/README.md), and the student version it implies.

    # Your turn: ...
    ### BEGIN SOLUTION
    answer = ...
    ### END SOLUTION

    check("00.tokens_per_second", answer, tokens=..., seconds=...)

`student_version(nb)` turns each solution block into `# YOUR CODE HERE` plus `name = None` for every name the
solution assigned; `exercise_ids(nb)` lists the checks a notebook makes.
"""

from __future__ import annotations

import ast
import copy
import re
import textwrap

from ..errors import LabkitError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_FUNCTION = "check"
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([\w.\-]+)["']""")
SOLUTION_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[^\n]*\n(.*?)^[ \t]*{re.escape(END)}[^\n]*$", re.M | re.S)


def assigned_names(code: str) -> list[str]:
    """Top-level names a solution assigns (in order), so the student version can set them to None."""
    try:
        tree = ast.parse(textwrap.dedent(code))
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


def strip_solutions(source: str) -> str:
    """The cell source with every solution block replaced by a placeholder."""
    def replace(match: re.Match) -> str:
        indent, body = match.group(1), match.group(2)
        lines = [f"{indent}# YOUR CODE HERE"] + [f"{indent}{name} = None" for name in assigned_names(body)]
        return "\n".join(lines)

    if source.count(BEGIN) != source.count(END):  # also keeps the block search linear
        raise LabkitError(f"unbalanced solution markers: every '{BEGIN}' needs an '{END}'")
    return SOLUTION_BLOCK.sub(replace, source)


def student_version(nb):
    """A copy of a notebook (nbformat node) with solutions stripped and outputs cleared."""
    student = copy.deepcopy(nb)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
    return student


def exercise_ids(nb) -> list[str]:
    """The exercise ids checked in a notebook, in order."""
    return [m for cell in nb.cells if cell.cell_type == "code" for m in CHECK_CALL.findall(cell.source)]


def is_check_call(func: ast.expr) -> bool:
    """`check(...)` or `anything.check(...)`."""
    return (isinstance(func, ast.Name) and func.id == CHECK_FUNCTION) or (
        isinstance(func, ast.Attribute) and func.attr == CHECK_FUNCTION)
