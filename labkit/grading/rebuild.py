"""A submission rebuilt from its master: the code the grader runs for one student, and the checks it records.

- Cells are matched to the master's by id, then, for master cells still unmatched, by content (in order): a
  notebook saved without ids (nbformat < 4.5, or converted from nbformat 3) or with re-numbered ids is graded
  like any other, with a note. Matching uses dictionary lookups, so it is linear in the notebook's size.
- Every check cell comes from the master and is replaced by a *recording* cell (labkit.grading.records): it
  evaluates the check's answer and inputs in the student's kernel and appends them to the records file. It never
  raises, so a wrong or blank exercise does not stop the run. A check cell the student deleted or edited counts as
  failed (the report says what the restored check would have said).
- Set-up cells the student deleted come back from the master; solution cells come back blank; cells the student
  added stay after the master cell they followed. Tags, metadata and outputs are dropped, so nothing can skip or
  excuse a cell.

`suspicious_code` lists code that tries to change grading (it gains nothing; the instructor should know), in one
linear pass per cell.
"""

from __future__ import annotations

import ast
import bisect
import itertools
import re
from dataclasses import dataclass, field

from ..errors import LabkitError
from .convention import BEGIN, CHECK_CALL, END, is_check_call, strip_solutions
from .records import RECORDER

MAX_CANDIDATES = 50  # cells tried per master cell when matching by content: keeps matching linear


@dataclass
class CheckSite:
    """One check(...) call of the master notebook, as the grader runs it."""

    site: int  # position among the master's check calls
    exercise_id: str
    cell_id: str
    answer_source: str
    input_sources: dict[str, str]  # keyword -> expression, from the master's source
    status: str = "restored"  # "intact", or "edited" / "deleted" in the submission (counts as failed)


@dataclass
class RunCell:
    """One code cell the grader runs, and how the report names it."""

    source: str
    label: str
    sites: list[int] = field(default_factory=list)  # the check sites this cell records


@dataclass
class PreparedRun:
    cells: list[RunCell]
    sites: list[CheckSite]
    notes: list[str]


def check_sites(master) -> list[CheckSite]:
    """Every check call of a master notebook, in order, with the source of its answer and inputs."""
    sites: list[CheckSite] = []
    for cell in master.cells:
        if cell.cell_type != "code" or not CHECK_CALL.search(cell.source):
            continue
        source = cell.source
        try:
            tree = ast.parse(source)
        except SyntaxError as err:
            raise LabkitError(f"the master's check cell {cell.get('id')} is not valid Python: {err}") from err
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and is_check_call(node.func) and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            if len(node.args) != 2 or any(k.arg is None for k in node.keywords):
                raise LabkitError(f"check cell {cell.get('id')}: grading needs check(id, answer, name=value, ...)")
            sites.append(CheckSite(len(sites), node.args[0].value, cell.get("id"),
                                   ast.get_source_segment(source, node.args[1]),
                                   {k.arg: ast.get_source_segment(source, k.value) for k in node.keywords}))
    return sites


def recording_cell(sites: list[CheckSite], records_path: str, nonce: str) -> str:
    """The source that replaces a master check cell: records each check's answer and inputs."""
    lines = ["# Restored from the master by the grader: records this check's answer for grading.", RECORDER]
    for s in sites:
        arguments = [f"('answer', lambda: ({s.answer_source}))"]
        arguments += [f"({name!r}, lambda: ({src}))" for name, src in s.input_sources.items()]
        lines.append(f"__labkit_record({records_path!r}, {nonce!r}, {s.site}, {s.exercise_id!r}, "
                     f"[{', '.join(arguments)}])")
    return "\n".join(lines)


def normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _solution_frame(source: str) -> tuple[str, str] | None:
    """The master solution cell's text before its first BEGIN and after its last END (normalized), which the
    student's cell keeps around their own code; None when there is no text before the block to recognise."""
    after_end = source.rsplit(END, 1)[1] if END in source else ""
    head = normalized(source.split(BEGIN, 1)[0])
    tail = normalized(after_end.split("\n", 1)[1] if "\n" in after_end else "")
    return (head, tail) if head else None


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def match_cells(master_cells: list, their_cells: list) -> tuple[dict[int, int], int]:
    """master index -> submission index, and how many of those were matched by content rather than by id."""
    matched: dict[int, int] = {}
    their_index: dict[str, int] = {}
    for j, c in enumerate(their_cells):
        cid = c.get("id")
        if isinstance(cid, str) and cid not in their_index:
            their_index[cid] = j
    used: set[int] = set()
    for i, m in enumerate(master_cells):
        j = their_index.get(m.get("id")) if isinstance(m.get("id"), str) else None
        if j is not None and j not in used and their_cells[j].cell_type == m.cell_type:
            matched[i] = j
            used.add(j)

    # content pass: unmatched master code cells, in order, between their matched neighbours
    by_text: dict[str, list[int]] = {}
    by_first_line: dict[str, list[int]] = {}
    their_norm = [normalized(c.source) if c.cell_type == "code" else None for c in their_cells]
    for j, text in enumerate(their_norm):
        if text is not None and j not in used:
            by_text.setdefault(text, []).append(j)
            by_first_line.setdefault(_first_line(text), []).append(j)
    next_matched = [len(their_cells)] * (len(master_cells) + 1)
    for i in range(len(master_cells) - 1, -1, -1):
        next_matched[i] = matched.get(i, next_matched[i + 1])
    low, by_content = -1, 0
    for i, m in enumerate(master_cells):
        if i in matched:
            low = matched[i]
            continue
        if m.cell_type != "code":
            continue
        high = next_matched[i + 1]
        frame = _solution_frame(m.source) if BEGIN in m.source else None
        if BEGIN in m.source and frame is None:
            continue
        key = _first_line(frame[0]) if frame else normalized(m.source)
        candidates = by_first_line.get(key, []) if frame else by_text.get(key, [])
        start = bisect.bisect_right(candidates, low)
        for j in itertools.islice(candidates, start, start + MAX_CANDIDATES):
            if j >= high:
                break
            if j in used:
                continue
            if frame is None or (their_norm[j].startswith(frame[0]) and their_norm[j].endswith(frame[1])):
                matched[i], low, by_content = j, j, by_content + 1
                used.add(j)
                break
    return matched, by_content


def prepare_submission(master, submission, records_path: str, nonce: str) -> PreparedRun:
    """The cells the grader runs for one submission, and the master's check sites with their status.

    `submission` may be None (nothing usable handed in): the student version of the master is run."""
    from .convention import student_version

    sites = check_sites(master)
    sites_by_cell: dict[str, list[CheckSite]] = {}
    for s in sites:
        sites_by_cell.setdefault(s.cell_id, []).append(s)
    theirs = [c for c in (submission if submission is not None else student_version(master)).cells
              if c.cell_type in ("code", "markdown")]
    masters = list(master.cells)
    matched, by_content = match_cells(masters, theirs)
    notes = []
    if by_content and submission is not None:
        by_id = len(matched) - by_content
        notes.append(f"the notebook's cell ids did not all match the master's: {by_content} cell(s) were matched "
                     f"by their content ({by_id} by id)")
    master_of = {j: i for i, j in matched.items()}

    added_after: dict[int, list[int]] = {}  # master index (-1: before any) -> the student's own cells after it
    anchor = -1
    for j, c in enumerate(theirs):
        if j in master_of:
            anchor = master_of[j]
        elif c.cell_type == "code":
            added_after.setdefault(anchor, []).append(j)

    def theirs_cell(j: int) -> RunCell:
        return RunCell(theirs[j].source, f"your cell {j + 1}")

    cells = [theirs_cell(j) for j in added_after.get(-1, [])]
    for i, m in enumerate(masters):
        mid = m.get("id")
        if m.cell_type == "code" and mid in sites_by_cell:
            j = matched.get(i)
            if j is None:
                status = "deleted"
            elif theirs[j].cell_type == "code" and normalized(theirs[j].source) == normalized(m.source):
                status = "intact"
            else:
                status = "edited"
            for s in sites_by_cell[mid]:
                s.status = status
            cells.append(RunCell(recording_cell(sites_by_cell[mid], records_path, nonce),
                                 f"the check cell of {', '.join(s.exercise_id for s in sites_by_cell[mid])}",
                                 [s.site for s in sites_by_cell[mid]]))
        elif i in matched:
            if theirs[matched[i]].cell_type == "code":
                cells.append(theirs_cell(matched[i]))
        elif m.cell_type == "code":  # a deleted solution comes back blank, set-up code as it was
            cells.append(RunCell(strip_solutions(m.source), f"the master's cell {i + 1}, restored"))
        cells.extend(theirs_cell(j) for j in added_after.get(i, []))
    return PreparedRun(cells, sites, notes)


# ----------------------------------------------------------------------------- code that tries to change grading

_HOOKS = {"settrace", "setprofile", "addaudithook", "pre_run_cell", "post_run_cell", "pre_execute",
          "post_execute", "input_transformers_cleanup", "input_transformers_post", "ast_transformers",
          "set_custom_exc", "run_cell", "register_magic_function"}
_DYNAMIC = {"exec": "runs code built from strings (exec)", "eval": "runs code built from strings (eval)",
            "compile": "compiles code built from strings (compile)",
            "__import__": "imports modules by computed name (__import__)",
            "setattr": "sets attributes by computed name (setattr)",
            "delattr": "deletes attributes by computed name (delattr)"}
_LINE_PATTERNS = [  # for cells that are not plain Python (magics): anchored at the line's start, so linear
    (re.compile(r"\s*(labkit\.)?check\s*=(?!=)"), "reassigns check"),
    (re.compile(r"\s*def\s+check\s*\("), "defines its own check"),
    (re.compile(r"\s*labkit\.[\w.]*\s*=(?!=)"), "replaces something inside labkit"),
]
_LINE_WORDS = {"settrace": "hooks the notebook's execution", "pre_run_cell": "hooks the notebook's execution",
               "input_transformers": "hooks the notebook's execution", "addaudithook": "hooks the notebook's execution",
               "__labkit_record": "calls the grader's recorder", "exercises(": "reaches for labkit's registry of exercises"}
_MAX_LINE_SCANNED = 2_000


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _scan_tree(tree: ast.AST, found: set[str]) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "check":
            found.add("defines its own check")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, ast.Name) and sub.id == "check" and isinstance(sub.ctx, (ast.Store, ast.Del)):
                        found.add("reassigns check")
                    elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                        if sub.attr == "check":
                            found.add("reassigns check")
                        if _root_name(sub) == "labkit":
                            found.add("replaces something inside labkit")
                    elif isinstance(sub, ast.Subscript) and isinstance(sub.ctx, (ast.Store, ast.Del)) and (
                            isinstance(sub.value, ast.Attribute) and sub.value.attr in ("__dict__", "modules")):
                        found.add("writes into a module's namespace (__dict__ or sys.modules)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC:
            found.add(_DYNAMIC[node.func.id])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in _HOOKS:
            found.add("hooks the notebook's execution")
        elif isinstance(node, ast.Attribute):
            if node.attr in _HOOKS or (node.attr == "events" and isinstance(node.value, ast.Call)):
                found.add("hooks the notebook's execution")
            elif node.attr == "modules" and _root_name(node) == "sys":
                found.add("reaches into sys.modules")
            elif node.attr in ("reload", "import_module") or node.attr.startswith(("_expected_", "_validate_")):
                found.add("reloads modules or reaches for labkit's expected answers")
            elif node.attr == "exercises":
                found.add("reaches for labkit's registry of exercises")
        elif isinstance(node, ast.Name) and node.id in ("exercises", "__labkit_record"):
            found.add("reaches for labkit's registry of exercises" if node.id == "exercises"
                      else "calls the grader's recorder")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any((m or "").split(".")[0] in ("ctypes", "importlib", "gc") for m in modules):
                found.add("imports ctypes, importlib or gc (can reach around Python's rules)")


def suspicious_code(sources: list[str]) -> list[str]:
    """What the submission's code does to grading, each a short phrase; linear in the code's size."""
    found: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # magics, or nesting the parser refuses
            tree = None
        if tree is not None:
            try:
                _scan_tree(tree, found)
                continue
            except RecursionError:
                pass
        for line in source.splitlines():
            line = line[:_MAX_LINE_SCANNED]
            for pattern, what in _LINE_PATTERNS:
                if pattern.match(line):
                    found.add(what)
            for word, what in _LINE_WORDS.items():
                if word in line:
                    found.add(what)
    return [f"the submission {what} (no effect on the grade)" for what in sorted(found)]
