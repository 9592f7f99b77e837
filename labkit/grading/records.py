"""The answers a submission hands the grader: written as JSON lines inside its sandbox, read back here.

Each restored check cell calls `__labkit_record(...)` (RECORDER, defined in that same cell so no earlier cell
can replace it). It evaluates the check's answer and inputs in the student's kernel and appends one line:

    {"nonce": ..., "site": 2, "exercise": "03.kv_cache_gib", "arguments": {"answer": {"value": V}, ...}}

Values are tagged so that no answer can pass for another kind of value: JSON null, booleans, strings, integers
below 2**63 and finite floats stand for themselves; everything else is {"t": TAG, "v": ...} with TAG one of
"float" (nan, inf), "int" (its digits), "list", "dict" (a list of [key, value] pairs) or "unreadable" (what it
was). The grader never unpickles or executes anything it reads back.

`parse_records` is the grader's side: bounded in size, nesting and count, linear in the input, and it never
raises. Only the student's own sandbox can write its records file, so a student can at most misreport their own
answers.
"""

from __future__ import annotations

import json
import math

from .safe_io import MAX_JSON_DEPTH, json_depth

MAX_RECORDS_BYTES = 5_000_000
MAX_LINE_BYTES = 1_000_000
MAX_RECORD_DEPTH = 32
MAX_INT_DIGITS = 4000

RECORDER = '''\
def __labkit_record(records_path, nonce, site, exercise, arguments):
    import json, math, os
    budget = [100_000]
    def plain(value, depth=0):
        budget[0] -= 1
        if budget[0] < 0:
            return {"t": "unreadable", "v": "too many values"}
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value if len(value) <= 100_000 else {"t": "unreadable", "v": "string too long"}
        if isinstance(value, int):
            return value if abs(value) < 2**63 else {"t": "int", "v": str(value)}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
        if depth >= 20:
            return {"t": "unreadable", "v": "nested too deeply"}
        if hasattr(value, "tolist") and hasattr(value, "shape"):
            size = 1
            for n in value.shape:
                size *= int(n)
            if size > 100_000:
                return {"t": "unreadable", "v": "array too large"}
            return plain(value.tolist(), depth + 1)
        if isinstance(value, (list, tuple)) and len(value) <= 100_000:
            return {"t": "list", "v": [plain(v, depth + 1) for v in value]}
        if isinstance(value, dict) and len(value) <= 10_000:
            return {"t": "dict", "v": [[str(k), plain(v, depth + 1)] for k, v in value.items()]}
        return {"t": "unreadable", "v": type(value).__name__}
    recorded = {}
    for name, thunk in arguments:
        try:
            recorded[name] = {"value": plain(thunk())}
        except BaseException as err:  # the learner's code: record the error, never raise
            recorded[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    line = json.dumps({"nonce": nonce, "site": site, "exercise": exercise, "arguments": recorded})
    try:
        fd = os.open(records_path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            os.write(fd, (line + "\\n").encode("utf-8", "replace"))
        finally:
            os.close(fd)
        print(f"[{exercise}] answer recorded for grading")
    except OSError as err:
        print(f"[{exercise}] the answer could not be recorded: {err}")
'''


class Unreadable:
    """A recorded value the grader cannot use (an object, a huge array, a malformed record)."""

    def __init__(self, kind: str):
        self.kind = str(kind)[:100]

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def decode(value, depth: int = 0):
    """A recorded value back in Python: numbers, strings, lists, dicts, or Unreadable. Never raises."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else Unreadable("integer out of range")
    if isinstance(value, float):
        return value if math.isfinite(value) else Unreadable("malformed record")
    if depth > MAX_RECORD_DEPTH or not (isinstance(value, dict) and set(value) == {"t", "v"}):
        return Unreadable("malformed record")
    tag, inner = value["t"], value["v"]
    if tag == "float" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    if tag == "int" and isinstance(inner, str) and inner.lstrip("-").isdigit() and len(inner) <= MAX_INT_DIGITS:
        return int(inner)
    if tag == "list" and isinstance(inner, list):
        return [decode(v, depth + 1) for v in inner]
    if tag == "dict" and isinstance(inner, list) and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in inner):
        return {k: decode(v, depth + 1) for k, v in inner}
    if tag == "unreadable":
        return Unreadable(inner if isinstance(inner, str) else "unreadable")
    return Unreadable("malformed record")


def parse_records(text: str, nonce: str) -> tuple[dict[int, dict], list[str]]:
    """The records by site (the first readable record of each site), and notes on what was skipped."""
    records: dict[int, dict] = {}
    repeated: dict[int, int] = {}
    skipped = 0
    for line in text[:MAX_RECORDS_BYTES].splitlines():
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES or json_depth(line, MAX_JSON_DEPTH) > MAX_RECORD_DEPTH + 4:
            skipped += 1
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            skipped += 1
            continue
        site = record.get("site") if isinstance(record, dict) else None
        if not isinstance(record, dict) or record.get("nonce") != nonce or type(site) is not int \
                or not isinstance(record.get("arguments"), dict):
            skipped += 1
            continue
        if site in records:
            repeated[site] = repeated.get(site, 1) + 1
        else:
            records[site] = record
    notes = []
    if skipped:
        notes.append(f"{skipped} line(s) of the records file were not valid records and were ignored")
    if len(text) > MAX_RECORDS_BYTES:
        notes.append(f"the records file was cut at {MAX_RECORDS_BYTES / 1e6:.0f} MB")
    notes += [f"check {site + 1} was recorded {n} times; the first record was graded"
              for site, n in sorted(repeated.items())]
    return records, notes


def argument(record: dict, name: str) -> tuple[bool, object, str]:
    """(recorded, value, error) for one argument of a record."""
    entry = record.get("arguments", {}).get(name)
    if not isinstance(entry, dict):
        return False, None, "missing"
    if "error" in entry:
        return False, None, str(entry["error"])[:500]
    if "value" not in entry:
        return False, None, "missing"
    return True, decode(entry["value"]), ""
