"""Reading what a student controls without following it anywhere: bounded, linear, never blocking.

- `read_regular_file`: a plain file or a refusal that says why (a symbolic link, a FIFO, a device, a hard link,
  too large). Opened without following links and without blocking, and checked again once open.
- `loads_bounded`: JSON with a size and a nesting limit checked in one linear pass before parsing, so deeply
  nested input is refused instead of exhausting the parser's recursion.
- `walk`: the files below a folder, without following symbolic links, up to a number of entries and a depth.

Used by the grader on submissions and by the runner inside the sandbox on its own records.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections import deque
from collections.abc import Iterator

MAX_JSON_DEPTH = 64


class Refused(Exception):  # noqa: N818  (a reason, not a failure of the grader)
    """A file the grader will not read, with the reason in words."""


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file")):
        if test(mode):
            return name
    return "a special file"


def read_regular_file(path: str | os.PathLike, max_bytes: int, allow_hard_links: bool = False) -> bytes:
    """The bytes of a regular file, or Refused with the reason."""
    try:
        before = os.lstat(path)
    except OSError as err:
        raise Refused(f"could not be read ({err.strerror or type(err).__name__})") from None
    if not stat.S_ISREG(before.st_mode):
        raise Refused(f"is {kind_of(before.st_mode)}")
    if before.st_nlink > 1 and not allow_hard_links:
        raise Refused(f"is a hard link ({before.st_nlink} names for one file)")
    if before.st_size > max_bytes:
        raise Refused(f"is {before.st_size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise Refused(f"could not be opened ({err.strerror or type(err).__name__})") from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise Refused("changed while it was being read")
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise Refused(f"could not be read ({err.strerror or type(err).__name__})") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise Refused(f"grew over the {max_bytes / 1e6:.0f} MB limit")
    return b"".join(chunks)


def json_depth(text: str, stop_at: int = MAX_JSON_DEPTH) -> int:
    """How deeply brackets nest in JSON text (strings skipped), in one pass; stops counting past `stop_at`."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_at:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads, refusing input nested deeper than `max_depth` (Refused says why)."""
    if json_depth(text, max_depth) > max_depth:
        raise Refused(f"is JSON nested more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except (ValueError, RecursionError, MemoryError) as err:
        raise Refused(f"is not valid JSON ({type(err).__name__}: {str(err)[:100]})") from None


def walk(root: str | os.PathLike, max_entries: int = 20_000, max_depth: int = 10,
         skip_dirs: tuple[str, ...] = ()) -> Iterator[tuple[str, os.DirEntry]]:
    """(path relative to root, entry) for every entry below `root` that is not a folder, breadth first, never
    following symbolic links; folders named in `skip_dirs` are not entered. Stops after `max_entries` entries."""
    queue, seen = deque([("", os.fspath(root), 0)]), 0
    while queue:
        relative, folder, depth = queue.popleft()
        try:
            with os.scandir(folder) as entries:
                listing = sorted(itertools.islice(entries, max_entries - seen + 1), key=lambda e: e.name)
        except OSError:
            continue
        for entry in listing:
            seen += 1
            if seen > max_entries:
                return
            rel = f"{relative}/{entry.name}" if relative else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if depth + 1 <= max_depth and entry.name not in skip_dirs:
                    queue.append((rel, entry.path, depth + 1))
            else:
                yield rel, entry
