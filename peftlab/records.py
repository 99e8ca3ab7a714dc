"""Records on disk: where the kit's data lives, the record format, and checking + loading JSONL files.

Record format (the kit's data/ sets and a learner's own files alike): JSON Lines,
UTF-8, one JSON object per line with four string fields (extra fields are kept and ignored):
    id           unique within the file(s), not empty; names the record in error messages
    instruction  the task, put into the system message (may be empty)
    input        the user message (may be empty)
    output       the answer to learn, not blank; a JSON answer is written as text (json.dumps)
    {"id": "ex-1", "instruction": "Extract the order as JSON.", "input": "2 teas to Oslo", "output": "{\\"qty\\": 2}"}
Blank lines and a UTF-8 byte-order mark are accepted; a JSON array, a record spread over
several lines or a non-UTF-8 byte is refused with the file, line and field (a `DataError`).

Loading uses `datasets` on local files and never contacts a hub (no download counts, no
telemetry), whatever the user's download setting is for models. `peftlab.data` turns the
records into token batches; it re-exports this module's public names.

Public API:
    TASKS, SPLITS, REQUIRED_FIELDS, FORMAT; DataError(ValueError)
    data_dir() -> Path;  task_path(task, split) -> Path
    validate_file(path) -> list[dict]                 (errors name the file, line and field)
    check_records(records, source="records") -> list[dict]   (in-memory records, same checks)
    load_jsonl(paths) -> datasets.Dataset;  load_files(train, validation=None, test=None) -> DatasetDict
    load_split(task, split) -> datasets.Dataset;  load_task(task) -> datasets.DatasetDict
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TASKS = ("orders", "sql")
SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "instruction", "input", "output")
FORMAT = "one JSON object per line with string fields " + ", ".join(REQUIRED_FIELDS)
_FIRST_IDS = 5       # how many offending ids an error lists


class DataError(ValueError):
    """Data that cannot be trained on; the message names the file and line (or record id) and the fix."""


def data_dir() -> Path:
    """The data/ folder: $PEFTLAB_DATA, else data/ next to the peftlab package (a git checkout)."""
    env = os.environ.get("PEFTLAB_DATA", "").strip()
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data"


def task_path(task: str, split: str) -> Path:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    path = data_dir() / task / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist: run `python data/generate.py` from the repository "
                        "root, or point PEFTLAB_DATA at the data folder")
    return path


def _is_kit_file(path: Path) -> bool:
    """A file of the kit's own data/ sets (fixed by regenerating), not a learner's file (fixed by hand)."""
    try:
        rel = path.resolve().relative_to(data_dir().resolve())
    except ValueError:
        return False
    return len(rel.parts) == 2 and rel.parts[0] in TASKS and rel.parts[1] in {f"{s}.jsonl" for s in SPLITS}


def _json_type(x: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
    return names.get(type(x), type(x).__name__)


def _record_problem(rec: Any) -> str | None:
    """What is wrong with one record, in words naming the field; None if it can be trained on."""
    if isinstance(rec, Mapping) and all(isinstance(rec.get(f), list) for f in REQUIRED_FIELDS):
        return "columns of lists, not one record per line (pandas: df.to_json(path, orient='records', lines=True))"
    if not isinstance(rec, Mapping):
        return f"expected a JSON object {{...}} with fields {', '.join(REQUIRED_FIELDS)}, got {_json_type(rec)}"
    missing = [f for f in REQUIRED_FIELDS if f not in rec]
    if missing:
        near = [k for k in rec if isinstance(k, str) and k.strip().lower() in missing and k not in missing]
        return (f"missing field(s) {', '.join(missing)}" + (f" (found {', '.join(map(repr, near))}: field "
                "names are lowercase)" if near else "") + f"; every record needs {', '.join(REQUIRED_FIELDS)}")
    for f in REQUIRED_FIELDS:
        if not isinstance(rec[f], str):
            hint = "; write a JSON answer as text with json.dumps(...)" if f == "output" else ""
            shown = "" if rec[f] is None else " " + json.dumps(rec[f], default=repr)[:40]
            return f"field {f} must be a string, got {_json_type(rec[f])}{shown}{hint}"
    if not rec["id"].strip():
        return "field id is empty: give every record a unique id"
    if not rec["output"].strip():
        return "field output is blank: nothing to learn from this record"
    return None


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _fail(where: str, problem: str, kit: bool, fix: str = "fix that line (format: data/DATASHEET.md)") -> DataError:
    """The one-line error; the kit's own files are fixed by regenerating them, a learner's by editing."""
    return DataError(f"{where}: {problem}; " + ("regenerate the kit's data with `python data/generate.py`"
                                                 if kit else fix))


def validate_file(path: str | Path) -> list[dict]:
    """Read a JSON Lines file and check every record (see the module docstring); return the records.

    Raises DataError naming `path:line` and the field for a missing path, a folder, a non-UTF-8
    byte, a JSON array or multi-line record, malformed JSON, a missing, null or non-string field,
    a blank id or output, a repeated id, or a file with no records.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"expected the path of a .jsonl file (str or Path), got {type(path).__name__}")
    path = Path(path).expanduser()
    kit = _is_kit_file(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.jsonl"))[:3]
        raise DataError(f"{path} is a folder: pass a .jsonl file" + (f" inside it ({', '.join(inside)})"
                                                                      if inside else ""))
    if not path.is_file():
        hint = "pass a list of files, e.g. sorted(Path('dir').glob('*.jsonl'))" if any(c in str(path) for c in "*?[") \
            else f"check the path (relative paths start at {Path.cwd()})"
        raise DataError(f"{path}: no such file; {hint}")
    try:
        raw_lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err}); check its permissions") from None
    records: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise _fail(f"{path}:{lineno}", f"byte 0x{raw[err.start]:02x} at column {err.start + 1} is not "
                        "UTF-8 text (a compressed file or another encoding?)", kit, "save the file as UTF-8") from None
        if not line.strip():
            continue  # blank lines (and a trailing newline) are harmless; `datasets` skips them too
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            head = line.strip()
            fix = "fix that line (format: data/DATASHEET.md)"
            if not records and head.startswith("["):
                problem, fix = "the file is one JSON array, not JSON Lines", "write one record per line"
            elif head.endswith(",") and _is_json(head[:-1]):
                problem, fix = "a comma after the record", "remove it: JSON Lines has no commas between records"
            elif head in ("{", "}") or head.endswith(("{", ",")) and not head.startswith("{"):
                problem, fix = "a record spreads over several lines (pretty-printed JSON)", "write each on one line"
            elif not records and not head.startswith("{"):
                problem, fix = "not JSON Lines (a CSV or text file?)", f"convert it to {FORMAT}"
            else:
                problem = f"malformed JSON ({err.msg} at column {err.colno})"
            raise _fail(f"{path}:{lineno}", problem, kit, fix) from None
        problem = _record_problem(rec)
        if problem:
            raise _fail(f"{path}:{lineno}", problem, kit)
        if rec["id"] in first_line:
            raise _fail(f"{path}:{lineno}", f"id {rec['id']!r} is already used on line "
                        f"{first_line[rec['id']]}: ids must be unique", kit)
        first_line[rec["id"]] = lineno
        records.append(rec)
    if not records:
        raise _fail(f"{path}", "no records (the file is empty or only blank lines)", kit, f"write {FORMAT}")
    return records


def check_records(records: Sequence[Mapping] | Any, source: str = "records") -> list[dict]:
    """The checks of validate_file for records in memory (a list of dicts or a Dataset); returns dicts.

    Errors name `source[index] (id ...)` and the field; an empty collection is an error (nothing to train on).
    """
    if isinstance(records, (str, bytes, Mapping)) or not hasattr(records, "__iter__"):
        raise DataError(f"{source}: expected a list of records (dicts) or a datasets.Dataset, got "
                        f"{type(records).__name__}; to read a file use data.load_jsonl(path)")
    out, first = [], {}
    for i, rec in enumerate(records):
        rid = f" (id {rec.get('id')!r})" if isinstance(rec, Mapping) and rec.get("id") is not None else ""
        problem = _record_problem(rec)
        if problem is None and rec["id"] in first:
            problem = f"id {rec['id']!r} is already used by {source}[{first[rec['id']]}]: ids must be unique"
        if problem:
            raise DataError(f"{source}[{i}]{rid}: {problem}")
        first[rec["id"]] = i
        out.append(dict(rec))
    if not out:
        raise DataError(f"{source}: no records to train on (the list or dataset is empty): "
                        "load a file with data.load_jsonl(path), or check the filter that emptied it")
    return out


@contextlib.contextmanager
def _local_only():
    """Load local files without any hub request: datasets' download-count ping is off, offline on.

    Scoped to the call, so a user who allows hub downloads (settings.downloads_allowed) keeps that
    for models and hub datasets; the telemetry switches are set only where the user has not set them.
    """
    import datasets.config as dc

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
    saved = dc.HF_HUB_OFFLINE, dc.HF_UPDATE_DOWNLOAD_COUNTS
    dc.HF_HUB_OFFLINE, dc.HF_UPDATE_DOWNLOAD_COUNTS = True, False
    try:
        yield
    finally:
        dc.HF_HUB_OFFLINE, dc.HF_UPDATE_DOWNLOAD_COUNTS = saved


def load_jsonl(paths: str | Path | Sequence[str | Path]):
    """One or more local JSONL files as one `datasets.Dataset`, every line validated first.

    Ids must be unique across the files. Raises DataError naming the file, line and field.
    """
    import datasets

    many = isinstance(paths, (list, tuple))
    if many and not paths:
        raise DataError("load_jsonl got an empty list of files: pass a path, e.g. 'my_train.jsonl'")
    files = [Path(p).expanduser() if isinstance(p, (str, os.PathLike)) else p for p in (paths if many else [paths])]
    seen: dict[str, Path] = {}
    for f in files:
        for rec in validate_file(f):
            if rec["id"] in seen:
                raise DataError(f"{f}: id {rec['id']!r} is also in {seen[rec['id']]}: ids must be unique "
                                "across the files of one split")
            seen[rec["id"]] = f
    with _local_only():
        return datasets.Dataset.from_json([str(f) for f in files])


def load_files(train: str | Path | Sequence, validation: str | Path | Sequence | None = None,
               test: str | Path | Sequence | None = None, **other):
    """A learner's own splits as a `datasets.DatasetDict` (only the splits given); see load_jsonl.

    The same file in two splits is refused; test or validation inputs that repeat a training
    input are reported in a warning (exact match on them measures memory, not skill).
    """
    import datasets

    if other:
        raise DataError(f"unknown split(s) {', '.join(other)}: use train=, validation=, test=")
    if train is None:
        raise DataError("load_files needs train= (a .jsonl path or a list of paths)")
    given = {s: p for s, p in {"train": train, "validation": validation, "test": test}.items() if p is not None}
    owner: dict[Path, str] = {}
    for split, p in given.items():
        for f in (p if isinstance(p, (list, tuple)) else [p]):
            key = Path(f).expanduser().resolve() if isinstance(f, (str, os.PathLike)) else f
            if key in owner:
                raise DataError(f"{f} is given as both {owner[key]} and {split}: split it into separate files")
            owner[key] = split
    dd = datasets.DatasetDict({s: load_jsonl(p) for s, p in given.items()})
    seen = set(dd["train"]["input"])
    for split in [s for s in dd if s != "train"]:
        rep = [r["id"] for r in dd[split] if r["input"] in seen]
        if rep:
            warnings.warn(f"{len(rep)} of {dd[split].num_rows} {split} inputs repeat a training input (first ids: "
                          f"{', '.join(rep[:_FIRST_IDS])}): their scores measure memory; drop them from one side",
                          stacklevel=2)
    return dd


def load_split(task: str, split: str):
    """One split of the kit's data as a `datasets.Dataset`, validated first (errors name the line)."""
    return load_jsonl(task_path(task, split))


def load_task(task: str):
    """All three splits of a task as a `datasets.DatasetDict`."""
    import datasets

    return datasets.DatasetDict({s: load_split(task, s) for s in SPLITS})
