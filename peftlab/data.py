"""Instruction data: load data/ with `datasets`, format with the chat template, mask the prompt.

    loss = -(1/|A|) Σ_{t∈A} log p(x_t | x_<t),  A = answer tokens (+ the closing <|im_end|>)

Supervised fine-tuning on (instruction, input, output) records, as in QLoRA
(Dettmers et al. 2023, arXiv:2305.14314 §5: "train on the target only"): the
prompt tokens get label -100, so only the answer is learned. A record
{"id", "instruction", "input", "output"} becomes

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{input}<|im_end|>\\n
    <|im_start|>assistant\\n{output}<|im_end|>

(the instruction replaces the model's long default system prompt: shorter sequences, faster steps).
Batches are padded only to their own longest row, so little compute goes to padding.

Public API:
    TASKS, SPLITS, REQUIRED_FIELDS; DataError(ValueError)
    data_dir() -> Path;  task_path(task, split) -> Path
    validate_file(path) -> list[dict]               (errors name the file and line)
    load_split(task, split) -> datasets.Dataset;  load_task(task) -> datasets.DatasetDict
    prompt_text(tok, record) -> str                 (ends with the assistant header)
    encode(tok, record, max_length=256) -> {"input_ids", "attention_mask", "labels"}
    tokenize(ds, tok, max_length=256) -> datasets.Dataset (those columns)
    Collator(pad_id)(rows) -> dict of LongTensors (B, L_max);  padding_fraction(batch) -> float
    parse_fields(task, text) -> dict[str, str] | None  (per-field scoring)
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TASKS = ("orders", "sql")
SPLITS = ("train", "validation", "test")
REQUIRED_FIELDS = ("id", "instruction", "input", "output")
IGNORE_INDEX = -100  # label value that CrossEntropyLoss skips (the prompt and the padding)


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file and the line."""


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


def validate_file(path: str | Path) -> list[dict]:
    """Read a JSONL file and check every record; return the records.

    Raises DataError naming `path:line` for an empty file, a line that is not a
    JSON object, a missing or non-string field, or an empty output.
    """
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue  # a trailing blank line is harmless
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg}); fix or regenerate "
                                "the file with `python data/generate.py`") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            missing = [f for f in REQUIRED_FIELDS if f not in rec]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; every "
                                f"record needs {', '.join(REQUIRED_FIELDS)}")
            bad = [f for f in REQUIRED_FIELDS if not isinstance(rec[f], str)]
            if bad:
                raise DataError(f"{path}:{lineno}: field(s) {', '.join(bad)} must be strings")
            if not rec["output"].strip():
                raise DataError(f"{path}:{lineno}: empty output: nothing to learn from this record")
            records.append(rec)
    if not records:
        raise DataError(f"{path}: the file is empty: regenerate it with `python data/generate.py`")
    return records


def load_split(task: str, split: str):
    """One split as a `datasets.Dataset`, validated first (so errors name the line)."""
    import datasets

    path = task_path(task, split)
    validate_file(path)
    return datasets.load_dataset("json", data_files=str(path), split="train")


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


def encode(tok, record: dict, max_length: int = 256) -> dict[str, list[int]]:
    """Token ids with prompt labels masked: labels = [-100]*len(prompt) + answer + [eos].

    Prompt and answer are tokenized separately and concatenated, so the prompt
    ids are exactly what `generate` sees at evaluation time.
    """
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: the answer could not be terminated")
    p_ids = tok(prompt_text(tok, record), add_special_tokens=False)["input_ids"]
    a_ids = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = (p_ids + a_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(p_ids) + a_ids)[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize(ds, tok, max_length: int = 256):
    """Map `encode` over a Dataset; keep only the model's columns."""
    return ds.map(lambda r: encode(tok, r, max_length), remove_columns=ds.column_names)


@dataclass
class Collator:
    """Right-pad a list of encoded rows to the batch's longest row (not a global max length)."""

    pad_id: int                 # token used for padding (attention_mask 0, label -100)
    pad_to_multiple_of: int = 1  # 8 helps tensor cores on GPU; 1 wastes nothing on CPU

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("Collator got an empty batch")
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
