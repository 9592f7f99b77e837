"""What was handed in: the student folders, and each student's copy of a master notebook, read safely.

- `list_folders`: every entry of the submissions folder is either a student to grade or skipped with the reason
  (a symbolic link, a file, archive or editor metadata, unreadable). Names are kept exactly; reports escape them.
- `find_copies`: the student's copies of one master notebook anywhere below their folder (never following links,
  bounded), including the names Jupyter and browsers give duplicates (`x-Copy1.ipynb`, `x (1).ipynb`). The newest
  is graded; the others are named in a note.
- `read_notebook`: a plain file only (a symbolic link, a FIFO, a device or a hard link is refused with a note),
  bounded in size, cells and JSON nesting; nbformat 3 and notebooks without cell ids are converted, with a note.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LabkitError
from .escape import display
from .safe_io import Refused, kind_of, loads_bounded, read_regular_file, walk

MAX_NOTEBOOK_BYTES = 50_000_000
MAX_CELLS = 5_000
METADATA_FOLDERS = {"__MACOSX": "macOS archive metadata", ".ipynb_checkpoints": "Jupyter checkpoints",
                    ".git": "a git repository's metadata", ".DS_Store": "macOS folder metadata"}


@dataclass
class Folders:
    students: list[str]  # folder names, exactly as on disk
    skipped: list[tuple[str, str]]  # (name, reason)


def list_folders(submissions: Path) -> Folders:
    """Every entry of the submissions folder: graded, or skipped with the reason."""
    if not submissions.is_dir():
        raise LabkitError(f"{submissions} is not a folder; give the folder that holds one folder per student")
    students, skipped = [], []
    with os.scandir(submissions) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as err:
                skipped.append((entry.name, f"could not be read ({err.strerror})"))
                continue
            if entry.name in METADATA_FOLDERS:
                skipped.append((entry.name, METADATA_FOLDERS[entry.name]))
            elif stat.S_ISLNK(mode):
                skipped.append((entry.name, "a symbolic link: hand in a folder, not a link to one"))
            elif not stat.S_ISDIR(mode):
                skipped.append((entry.name, f"{kind_of(mode)}, not a student's folder"))
            elif not os.access(entry.path, os.R_OK | os.X_OK):
                skipped.append((entry.name, "a folder the grader may not read"))
            else:
                students.append(entry.name)
    if not students and not skipped:
        raise LabkitError(f"{submissions} has no student folders: put each student's notebooks in its own folder")
    return Folders(students, skipped)


def _copy_pattern(name: str) -> re.Pattern:
    stem, suffix = re.escape(Path(name).stem), re.escape(Path(name).suffix)
    return re.compile(rf"{stem}(?:-Copy\d+| \(\d+\)| copy(?: \d+)?| - Copy(?: \(\d+\))?)?{suffix}", re.IGNORECASE)


@dataclass
class Choice:
    path: Path | None  # the copy to grade (None: nothing usable)
    relative: str | None
    refused: str | None = None  # why nothing could be graded although something was handed in
    notes: list[str] = field(default_factory=list)


def find_copies(student: Path, name: str) -> Choice:
    """The student's copy of master notebook `name` to grade, and notes on the others."""
    pattern = _copy_pattern(name)
    regular, special = [], []
    for relative, entry in walk(student, skip_dirs=tuple(METADATA_FOLDERS)):
        if not pattern.fullmatch(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        (regular if stat.S_ISREG(info.st_mode) else special).append((relative, info))
    if not regular and not special:
        return Choice(None, None)
    notes = []
    if regular:
        regular.sort(key=lambda item: (-item[1].st_mtime, len(item[0]), item[0]))
        relative = regular[0][0]
        others = [r for r, _ in regular[1:]] + [r for r, _ in special]
        if others:
            shown = ", ".join(display(o, 200) for o in others[:10]) + (" ..." if len(others) > 10 else "")
            notes.append(f"{len(others) + 1} copies of {name} were handed in; graded the newest, "
                         f"{display(relative, 200)}; not graded: {shown}")
        return Choice(student / relative, relative, None, notes)
    relative, info = special[0]
    return Choice(None, relative, f"{display(relative, 200)} is {kind_of(info.st_mode)}; only a plain notebook "
                                  "file is graded (refused)")


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    raise Refused("has a cell whose source is not text")


def _from_raw_cells(cells: list[dict], version: int):
    """A notebook of the cells' kinds, code and ids alone, for a file nbformat will not read."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for cell in cells:
        kind = cell.get("cell_type")
        code = cell.get("input" if version == 3 and kind == "code" else "source", "")
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell if kind in (
            "markdown", "heading") else nbformat.v4.new_raw_cell
        new = make(_text(code))
        if isinstance(cell.get("id"), str):
            new["id"] = cell["id"]
        else:
            new.pop("id", None)
        nb.cells.append(new)
    return nb


def read_notebook(path: Path):
    """(notebook as nbformat 4, notes) or Refused. Never follows a link, never blocks, never parses unbounded."""
    import nbformat

    data = read_regular_file(path, MAX_NOTEBOOK_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("is not UTF-8 text (a notebook is JSON)") from None
    raw = loads_bounded(text)
    if not isinstance(raw, dict):
        raise Refused("is not a notebook (its JSON is not an object)")
    version = raw.get("nbformat")
    minor = raw.get("nbformat_minor", 0)
    if version not in (3, 4):
        raise Refused(f"is not a notebook of nbformat 3 or 4 (nbformat: {display(version, 40)})")
    cells = raw.get("cells") if version == 4 else [c for w in raw.get("worksheets") or [] if isinstance(w, dict)
                                                  for c in (w.get("cells") or [])]
    if not isinstance(cells, list) or len(cells) > MAX_CELLS or not all(isinstance(c, dict) for c in cells):
        raise Refused(f"has no list of cells (JSON objects), or more than {MAX_CELLS}")
    notes = []
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # noqa: BLE001  nbformat's own errors vary by version
        nb = _from_raw_cells(cells, version)  # the grader needs only each cell's kind, code and id
        notes.append(f"the notebook does not follow the nbformat schema ({type(err).__name__}: "
                     f"{display(err, 120)}); its cells were read as they are")
    if version == 3:
        notes.append("the notebook was saved in nbformat 3; it was converted to nbformat 4 and its cells matched "
                     "to the master's by content")
    elif not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in cells):
        notes.append(f"the notebook was saved without cell ids (nbformat 4.{display(minor, 10)}); its cells were "
                     "matched to the master's by content")
    for cell in nb.cells:  # whatever the file held, the rest of the grader sees strings
        source = cell.get("source")
        if not isinstance(source, str):
            cell["source"] = "".join(s for s in source if isinstance(s, str)) if isinstance(source, list) else ""
        if cell.get("cell_type") not in ("code", "markdown", "raw"):
            cell["cell_type"] = "raw"
        if not isinstance(cell.get("id"), str):
            cell.pop("id", None)
    return nb, notes
