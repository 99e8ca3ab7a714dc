"""Instruction data: load JSONL with `datasets`, format with the chat template, mask the prompt.

    loss = -(1/|A|) Σ_{t∈A} log p(x_t | x_<t),  A = answer tokens (+ the closing <|im_end|>)

Supervised fine-tuning on (instruction, input, output) records, as in QLoRA
(Dettmers et al. 2023, arXiv:2305.14314 §5: "train on the target only"): the
prompt tokens get label -100, so only the answer is learned.

Record format (the kit's data/ sets and a learner's own files alike): JSON Lines,
UTF-8, one JSON object per line with four string fields (extra fields are kept and ignored):
    id           unique within the file(s), not empty; names the record in error messages
    instruction  the task, put into the system message (may be empty)
    input        the user message (may be empty)
    output       the answer to learn, not blank; a JSON answer is written as text (json.dumps)
    {"id": "ex-1", "instruction": "Extract the order as JSON.", "input": "2 teas to Oslo", "output": "{\\"qty\\": 2}"}
Blank lines and a UTF-8 byte-order mark are accepted; a JSON array, a record spread over
several lines or a non-UTF-8 byte is refused with the file, line and field. Train on your own
files with `load_files(train="my_train.jsonl", test="my_test.jsonl")` (see data/DATASHEET.md).

A record becomes (the instruction replaces the model's long default system prompt)

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{input}<|im_end|>\\n
    <|im_start|>assistant\\n{output}<|im_end|>

Length rule (`encode`, `tokenize`): the answer and its closing token are never cut. When
prompt + answer exceed `max_length`, the prompt is cut from the left, keeping its end (the
user text's tail and the assistant header); a record whose assistant header + answer alone
exceed `max_length` has no token left to learn from and is refused (DataError with the count,
the first ids and the max_length that fits). A row or batch with no supervised token is an
error in `Collator`, never a silent loss of 0. Batches are padded to their own longest row.

Loading local files never contacts a hub (no download counts, no telemetry), whatever the
user's download setting is for models.

Public API:
    TASKS, SPLITS, REQUIRED_FIELDS, IGNORE_INDEX; DataError(ValueError)
    data_dir() -> Path;  task_path(task, split) -> Path
    validate_file(path) -> list[dict]                 (errors name the file, line and field)
    check_records(records, source="records") -> list[dict]   (in-memory records, same checks)
    load_jsonl(paths) -> datasets.Dataset;  load_files(train, validation=None, test=None) -> DatasetDict
    load_split(task, split) -> datasets.Dataset;  load_task(task) -> datasets.DatasetDict
    prompt_text(tok, record) -> str                   (ends with the assistant header)
    encode(tok, record, max_length=256) -> {"input_ids", "attention_mask", "labels"}
    tokenize(ds_or_records, tok, max_length=256) -> datasets.Dataset (those columns)
    Collator(pad_id)(rows) -> dict of LongTensors (B, L_max);  padding_fraction(batch) -> float
    supervised_tokens(batch) -> int                   (labels the model predicts, after its shift)
    parse_fields(task, text) -> dict[str, str] | None  (per-field scoring)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TASKS = ("orders", "sql")
SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "instruction", "input", "output")
IGNORE_INDEX = -100  # label value that CrossEntropyLoss skips (the prompt and the padding)
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

    Scoped to the call, so a user who allows hub downloads (HF_HUB_OFFLINE unset) keeps that for
    models and hub datasets; the telemetry switches are set only where the user has not set them.
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


def messages(record: dict, with_answer: bool = False) -> list[dict]:
    msgs = [{"role": "system", "content": record["instruction"]},
            {"role": "user", "content": record["input"]}]
    if with_answer:
        msgs.append({"role": "assistant", "content": record["output"]})
    return msgs


def prompt_text(tok, record: dict) -> str:
    """The chat-formatted prompt, ending with the assistant header the answer follows."""
    return tok.apply_chat_template(messages(record), tokenize=False, add_generation_prompt=True)


def _check_max_length(max_length: Any) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive whole number of tokens (256 fits the kit's data), "
                         f"got {max_length!r}")


def _encode(tok, record: dict, max_length: int) -> tuple[dict[str, list[int]], int, int]:
    """(encoded row, prompt tokens cut from the left, tokens needed if it cannot fit else 0)."""
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: the answer could not be terminated")
    p_ids = tok(prompt_text(tok, record), add_special_tokens=False)["input_ids"]
    a_ids = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    if len(p_ids) + len(a_ids) <= max_length:
        cut = 0
    else:  # keep the answer whole and the end of the prompt: at least the assistant header
        bare = tok.apply_chat_template(messages(record), tokenize=False, add_generation_prompt=False)
        header = max(1, len(p_ids) - len(tok(bare, add_special_tokens=False)["input_ids"]))
        need = header + len(a_ids)
        if need > max_length:
            return {"input_ids": [], "attention_mask": [], "labels": []}, 0, need
        cut = len(p_ids) + len(a_ids) - max_length
        p_ids = p_ids[cut:]
    ids = p_ids + a_ids
    labels = [IGNORE_INDEX] * len(p_ids) + a_ids
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}, cut, 0


def encode(tok, record: dict, max_length: int = 256) -> dict[str, list[int]]:
    """Token ids with prompt labels masked: labels = [-100]*len(prompt) + answer + [eos].

    Prompt and answer are tokenized separately and concatenated, so the prompt ids are exactly
    what `generate` sees at evaluation time. Over max_length the prompt is cut from the left (the
    length rule in the module docstring); DataError if not even header + answer fit.
    """
    _check_max_length(max_length)
    problem = _record_problem(record)
    if problem:
        rid = f" {record.get('id')!r}" if isinstance(record, Mapping) and record.get("id") is not None else ""
        raise DataError(f"record{rid}: {problem}")
    enc, cut, need = _encode(tok, record, max_length)
    if need:
        raise DataError(f"record {record['id']!r}: its answer needs {need} tokens (assistant header + "
                        f"answer + end token) but max_length={max_length}: raise max_length to {need} "
                        "or shorten the output")
    if cut:  # one text per max_length, so Python shows it once, not once per record
        warnings.warn(f"records longer than max_length={max_length} get their prompt cut from the left, answer "
                      "kept whole; data.tokenize(ds, tok, max_length) counts them and names the length that "
                      "keeps them whole", stacklevel=2)
    return enc


def tokenize(ds, tok, max_length: int = 256):
    """Check every record, then map `encode` over them; keep only the model's columns.

    `ds` is a Dataset or a list of records. Records whose header + answer exceed max_length are
    refused all together (count, first ids, the max_length that fits); prompts cut to fit are
    reported in one warning.
    """
    import datasets

    _check_max_length(max_length)
    if isinstance(ds, datasets.Dataset):
        check_records(ds, source="dataset")
    else:  # only the required fields: extra fields of mixed types would not fit one Arrow column
        ds = datasets.Dataset.from_list([{f: r[f] for f in REQUIRED_FIELDS} for r in check_records(ds)])

    def row(r):
        enc, cut, need = _encode(tok, r, max_length)
        return {**enc, "_cut": cut, "_need": need}

    with _local_only():
        out = ds.map(row, remove_columns=ds.column_names)
    need, cut, ids = out["_need"], out["_cut"], ds["id"]
    bad = [i for i, n in enumerate(need) if n]
    if bad:
        raise DataError(f"{len(bad)} of {len(ids)} records cannot fit one answer token in max_length="
                        f"{max_length} (first ids: {', '.join(ids[i] for i in bad[:_FIRST_IDS])}): raise "
                        f"max_length to {max(need)}, or shorten those records' outputs")
    long = [i for i, c in enumerate(cut) if c]
    if long:
        warnings.warn(f"{len(long)} of {len(ids)} records are longer than max_length={max_length}: their "
                      f"prompts were cut from the left, answers kept whole (first ids: "
                      f"{', '.join(ids[i] for i in long[:_FIRST_IDS])}); raise max_length to "
                      f"{max(max_length + cut[i] for i in long)} to keep them whole", stacklevel=2)
    return out.remove_columns(["_cut", "_need"])


def supervised_tokens(batch: Mapping[str, Any]) -> int:
    """Labels the model learns from: positions 1.. not -100 (a causal LM shifts labels by one)."""
    labels = torch.as_tensor(batch["labels"])
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


@dataclass
class Collator:
    """Right-pad a list of encoded rows to the batch's longest row (not a global max length).

    Every row must carry at least one supervised label: a row without one would add nothing and
    a batch of them would report a loss of 0 while learning nothing.
    """

    pad_id: int                 # token used for padding (attention_mask 0, label -100)
    pad_to_multiple_of: int = 1  # 8 helps tensor cores on GPU; 1 wastes nothing on CPU

    def __post_init__(self):
        if isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int) or self.pad_id < 0:
            raise ValueError(f"pad_id must be a token id (int >= 0), got {self.pad_id!r}: pass "
                             "tok.pad_token_id after setting tok.pad_token = tok.eos_token if it is None")
        m = self.pad_to_multiple_of
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"pad_to_multiple_of must be an int >= 1 (1 = no rounding, 8 for GPUs), got {m!r}")

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Collator got an empty batch")
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping) or "input_ids" not in r or "labels" not in r:
                raise DataError(f"batch row {i} needs input_ids and labels: build rows with data.encode(tok, record)")
            if not r["input_ids"] or len(r["input_ids"]) != len(r["labels"]):
                raise DataError(f"batch row {i} has {len(r['input_ids'])} input_ids and {len(r['labels'])} "
                                "labels: they must be equal and > 0; build rows with data.encode(tok, record)")
            if not supervised_tokens({"labels": list(r["labels"])}):
                raise DataError(f"batch row {i} has no supervised token (every label after the first is "
                                "-100): its loss would read 0 and nothing would be learned; build rows with "
                                "data.encode, which cuts the prompt, never the answer")
        m = self.pad_to_multiple_of
        width = -(-max(len(r["input_ids"]) for r in rows) // m) * m
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            out["input_ids"].append(list(r["input_ids"]) + [self.pad_id] * pad)
            out["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
            out["labels"].append(list(r["labels"]) + [IGNORE_INDEX] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}  # each (B, L_max)


def padding_fraction(batch: dict[str, torch.Tensor]) -> float:
    """Share of positions in a collated batch that are padding (compute spent on nothing)."""
    mask = batch["attention_mask"]
    return 1.0 - mask.sum().item() / mask.numel()


_SQL_CLAUSES = re.compile(r"\b(SELECT|FROM|WHERE|ORDER BY|LIMIT)\b")


def parse_fields(task: str, text: str) -> dict[str, str] | None:
    """Split an answer into named fields for per-field scoring; None if it does not parse.

    orders: the JSON object's keys (values as JSON text, so 3 and "3" differ).
    sql: the clauses SELECT / FROM / WHERE / ORDER BY / LIMIT.
    """
    if task == "orders":
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            return None
        return {k: json.dumps(v) for k, v in obj.items()} if isinstance(obj, dict) else None
    if task == "sql":
        parts = _SQL_CLAUSES.split(text.strip().rstrip(";"))
        if len(parts) < 3:
            return None
        return {kw: val.strip() for kw, val in zip(parts[1::2], parts[2::2])}
    raise ValueError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
