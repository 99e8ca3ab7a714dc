"""Instruction data: load JSONL with `datasets`, format with the chat template, mask the prompt.

    loss = -(1/|A|) Σ_{t∈A} log p(x_t | x_<t),  A = answer tokens (+ the closing <|im_end|>)

Supervised fine-tuning on (instruction, input, output) records, as in QLoRA
(Dettmers et al. 2023, arXiv:2305.14314 §5: "train on the target only"): the
prompt tokens get label -100, so only the answer is learned.

Records (the JSONL format, its checks, loading the kit's sets or a learner's own files with
`datasets`, never touching a hub) live in `peftlab.records`; their public names are re-exported
here, so `data.load_split(...)` and `data.load_files(train="my_train.jsonl")` work as before.

A record becomes (the instruction replaces the model's long default system prompt)

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{input}<|im_end|>\\n
    <|im_start|>assistant\\n{output}<|im_end|>

Length rule (`encode`, `tokenize`): the answer and its closing token are never cut. When
prompt + answer exceed `max_length`, the prompt is cut from the left, keeping its end (the
user text's tail and the assistant header); a record whose assistant header + answer alone
exceed `max_length` has no token left to learn from and is refused (DataError with the count,
the first ids and the max_length that fits). A row or batch with no supervised token is an
error in `Collator`, never a silent loss of 0. Batches are padded to their own longest row.

Public API (plus the re-exported names of peftlab.records):
    IGNORE_INDEX
    prompt_text(tok, record) -> str                   (ends with the assistant header)
    encode(tok, record, max_length=256) -> {"input_ids", "attention_mask", "labels"}
    tokenize(ds_or_records, tok, max_length=256) -> datasets.Dataset (those columns)
    Collator(pad_id)(rows) -> dict of LongTensors (B, L_max);  padding_fraction(batch) -> float
    supervised_tokens(batch) -> int                   (labels the model predicts, after its shift)
    parse_fields(task, text) -> dict[str, str] | None  (per-field scoring)
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import records
# re-exported: callers write data.load_split(...), data.DataError, data.TASKS
from .records import (FORMAT, REQUIRED_FIELDS, SPLITS, TASKS, DataError, check_records,  # noqa: F401
                      data_dir, load_files, load_jsonl, load_split, load_task, task_path, validate_file)

IGNORE_INDEX = -100  # label value that CrossEntropyLoss skips (the prompt and the padding)
_FIRST_IDS = records._FIRST_IDS


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
    problem = records._record_problem(record)
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

    with records._local_only():
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
