"""The labkit a submission runs with while it is graded: the same package with its expected answers taken out.

Every function registered with `@exercise(...)` or `@validator(...)` computes (or judges) an expected answer.
`sealed_source` rewrites a module so each of them only calls `refuse(exercise_id)`: it records the call in the
grader's events file and raises LabkitError. The slips an exercise declares are dropped as well, and
`labkit.check._SEALED` is set, so `check(...)` inside the sandbox only says the grader will check the answer.

`build_sealed_copy` writes the rewritten package (compiled, read-only) once per class run; the sandbox mounts it
over labkit's own folder, so the original functions are not on the sandbox's file system at all (without the
sandbox it comes first on PYTHONPATH, which a determined student can undo; the report header says so). The
learner's own labkit is untouched: their self-checks keep working in their own notebooks.
"""

from __future__ import annotations

import ast
import compileall
import json
import os
import shutil
from pathlib import Path

EVENTS_VARIABLE = "LABKIT_GRADING_EVENTS"
_REGISTERS = ("exercise", "validator")


def refuse(exercise_id: str):
    """What an expected-answer function does in the sealed labkit: note the call, then refuse."""
    from ..errors import LabkitError

    path = os.environ.get(EVENTS_VARIABLE)
    if path:
        line = json.dumps({"event": "expected-answer", "exercise": str(exercise_id)[:200]}) + "\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass
    raise LabkitError(f"{exercise_id}: labkit's expected answer is not available while a submission is graded")


def _registered_id(node: ast.FunctionDef) -> str | None:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call):
            func = decorator.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in _REGISTERS:
                first = decorator.args[0] if decorator.args else None
                return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else "?"
    return None


class _Sealer(ast.NodeTransformer):
    def __init__(self):
        self.sealed: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef):
        exercise_id = _registered_id(node)
        if exercise_id is None:
            return self.generic_visit(node)
        node.args = ast.arguments(posonlyargs=[], args=[], vararg=ast.arg("args"), kwonlyargs=[], kw_defaults=[],
                                  kwarg=ast.arg("kwargs"), defaults=[])
        node.returns = None
        node.body = ast.parse(f"from labkit.grading.seal import refuse\nreturn refuse({exercise_id!r})").body
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call):
                decorator.keywords = [k for k in decorator.keywords if k.arg != "slips"]
        self.sealed.append(exercise_id)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


def sealed_source(source: str) -> tuple[str, list[str]]:
    """A module's source with its expected-answer functions replaced, and the exercise ids it sealed."""
    tree = ast.parse(source)
    sealer = _Sealer()
    tree = sealer.visit(tree)
    for node in tree.body:  # labkit.check: `_SEALED = False` becomes True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_SEALED" for t in node.targets):
            node.value = ast.Constant(True)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n", sealer.sealed


def _is_package(folder: Path) -> bool:
    return (folder / "__init__.py").is_file()


def build_sealed_copy(package: Path, destination: Path) -> tuple[Path, list[tuple[Path, Path]], list[str]]:
    """Write the sealed copy of `package` (labkit's folder) into destination/labkit. Returns that folder, the data
    folders (not Python packages) it leaves out as (real folder, its place in the copy) for the caller to mount or
    link, and the exercise ids sealed."""
    package = package.resolve()
    copy = destination / package.name
    data_folders: list[tuple[Path, Path]] = []
    sealed: list[str] = []
    for folder, subfolders, files in os.walk(package):
        folder = Path(folder)
        target = copy / folder.relative_to(package)
        target.mkdir(parents=True, exist_ok=True)
        keep = []
        for sub in sorted(subfolders):
            if sub == "__pycache__" or sub.startswith("."):
                continue
            if _is_package(folder / sub):
                keep.append(sub)
            else:
                (target / sub).mkdir(exist_ok=True)
                data_folders.append((folder / sub, target / sub))
        subfolders[:] = keep
        for name in sorted(files):
            source = folder / name
            if name.endswith(".py"):
                text, ids = sealed_source(source.read_text(encoding="utf-8"))
                (target / name).write_text(text, encoding="utf-8")
                sealed += ids
            elif not name.endswith((".pyc", ".pyo")):
                shutil.copyfile(source, target / name)
    compileall.compile_dir(str(copy), quiet=2, ddir=str(package), workers=1)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy, data_folders, sealed
