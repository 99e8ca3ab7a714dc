"""Evaluation: greedy answers that stop where the answer ends, exact match, per-field scores, losses.

    exact match  = (1/N) Σ_i [ŷ_i = y_i]                           (the whole answer string, after strip)
    field score  = (1/N) Σ_i [field_k(ŷ_i) = field_k(y_i)]         (per JSON key / SQL clause, data.parse_fields)
    answer loss  = −(1/|A|) Σ_{t∈A} log p(x_t | x_<t)              (A = answer tokens of all records, pooled)
    text NLL     = the same over every labelled token of given batches; perplexity = exp(NLL)

Losses are token-weighted over the whole set — Σ(loss_b · n_b) / Σ n_b — not a mean of batch
means, which would weight a short batch's tokens more than a long batch's.

Generation is greedy and stops a row as soon as its answer is complete: at EOS, or at the
task's own end — the `}` that balances the first `{` of an `orders` JSON object, the first `;`
outside a string literal of a `sql` query (every record in data/sql ends with one). An `orders`
answer that does not open with `{` can never parse as JSON, whatever follows, so it ends with
its first sentence or line (the base model writes prose there). A `transformers`
StoppingCriteria checks each row of a batch, so finished rows wait while the others go on and
an untrained model no longer writes until `max_new_tokens`. An answer that already ends
properly (EOS right after its end) decodes to the same string either way; the stop is
checked on the decoded text, so the last token may carry a few characters past the end.

Public API (notebooks 01–04, the showdown and the benchmarks call these):
    ANSWER_ENDS: task -> end(text) -> int | None;  answer_end(task, text) -> int | None
    generate(model, tok, records, *, task=None, batch_size=32, max_new_tokens=64) -> list[str]
    evaluate(model, tok, records, task, *, batch_size=32, max_new_tokens=None) -> EvalResult
        (task "orders"/"sql": answer-end stops and field scores; None or your own task's name:
        exact match only, stopping at EOS)
    EvalResult(exact_match, field_scores, n, predictions, references, inputs)
    answer_loss(model, tok, records, *, batch_size=16, max_length=256) -> float
    text_nll(model, batches) -> (nll, n_tokens)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from peft.helpers import DoraCaching
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from . import data


# --- where an answer ends ------------------------------------------------------------------

def json_end(text: str) -> int | None:
    """Index just past the `}` that balances the first `{` (braces inside strings don't count)."""
    start = text.find("{")
    if start < 0:
        return None
    depth, in_str, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            escaped, in_str = (False, in_str) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_str = True
        elif c in "{}":
            depth += 1 if c == "{" else -1
            if depth == 0:
                return i + 1
    return None


def prose_end(text: str) -> int | None:
    """Index just past the first sentence end (. ! or ? before a space or the end so far) or line
    end after some text."""
    m = _PROSE_END.search(text, len(text) - len(text.lstrip()))
    return m.end() if m else None


_PROSE_END = re.compile(r"[.!?](?=\s|$)|\n")


def orders_end(text: str) -> int | None:
    """An `orders` answer is one JSON object: it ends at the `}` balancing its `{`. An answer that
    does not open with `{` can never parse (exact match and every field score are 0 whatever
    follows), so it ends with its first sentence or line — enough to read what the model did."""
    body = text.lstrip()
    if not body:
        return None
    return json_end(text) if body[0] == "{" else prose_end(text)


def sql_end(text: str) -> int | None:
    """A `sql` answer is one query: it ends past the first `;` outside a '…' string literal
    ('' inside a literal toggles twice). Every record in data/sql ends with one."""
    in_str = False
    for i, c in enumerate(text):
        if c == "'":
            in_str = not in_str
        elif c == ";" and not in_str:
            return i + 1
    return None


ANSWER_ENDS: dict[str, Callable[[str], int | None]] = {"orders": orders_end, "sql": sql_end}  # per data.TASKS


def answer_end(task: str, text: str) -> int | None:
    """Where `task`'s answer ends in `text` (index past its last character), None while incomplete."""
    if task not in ANSWER_ENDS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(ANSWER_ENDS)}")
    return ANSWER_ENDS[task](text)


class _StopAtAnswerEnd(StoppingCriteria):
    """Per row: True once the generated text (after the prompt) holds a complete answer."""

    def __init__(self, tok, ends: list[Callable[[str], int | None] | None], prompt_len: int):
        self.tok, self.ends, self.prompt_len = tok, ends, prompt_len
        self.done = [False] * len(ends)

    def __call__(self, input_ids: torch.LongTensor, scores, **kw) -> torch.BoolTensor:
        for i, end in enumerate(self.ends):
            if end is not None and not self.done[i]:
                text = self.tok.decode(input_ids[i, self.prompt_len:], skip_special_tokens=True)
                self.done[i] = end(text) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _tasks(task: str | Sequence[str] | None, n: int) -> list[str | None]:
    tasks = [task] * n if task is None or isinstance(task, str) else list(task)
    if len(tasks) != n:
        raise ValueError(f"task has {len(tasks)} entries for {n} records: give one task, or one per record")
    bad = sorted({t for t in tasks if t is not None and t not in ANSWER_ENDS})
    if bad:
        raise ValueError(f"unknown task(s) {bad}: use one of {', '.join(ANSWER_ENDS)} (or None: stop at EOS only)")
    return tasks


# --- generation and scores -----------------------------------------------------------------

@dataclass
class EvalResult:
    exact_match: float                  # share of answers equal to the reference string
    field_scores: dict[str, float]      # per field (JSON key / SQL clause): share correct
    n: int                              # examples scored
    predictions: list[str] = field(repr=False, default_factory=list)
    references: list[str] = field(repr=False, default_factory=list)
    inputs: list[str] = field(repr=False, default_factory=list)


@torch.no_grad()
def generate(model: nn.Module, tok, records: Sequence[dict], *, task: str | Sequence[str] | None = None,
             batch_size: int = 32, max_new_tokens: int = 64) -> list[str]:
    """Greedy answers for chat-formatted records (left-padded batches), decoded without specials.

    task: "orders" / "sql" (or one per record) also stops each row at its answer's end (see the
    module docstring); None stops at EOS or max_new_tokens only.
    """
    tasks = _tasks(task, len(records))
    was_training, side = model.training, tok.padding_side
    model.eval()
    tok.padding_side = "left"  # generation continues from the right end of every row
    out: list[str] = []
    device = next(model.parameters()).device
    try:
        for i in range(0, len(records), batch_size):
            prompts = [data.prompt_text(tok, r) for r in records[i:i + batch_size]]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            prompt_len = enc["input_ids"].shape[1]
            ends = [ANSWER_ENDS[t] if t else None for t in tasks[i:i + batch_size]]
            stop = StoppingCriteriaList([_StopAtAnswerEnd(tok, ends, prompt_len)] if any(ends) else [])
            with DoraCaching():  # DoRA: reuse ‖W+BA‖ and BA across decoding steps (exact; eval mode only)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                     stopping_criteria=stop)
            out += [s.strip() for s in tok.batch_decode(gen[:, prompt_len:], skip_special_tokens=True)]
    finally:
        tok.padding_side = side
        model.train(was_training)
    return out


def answer_room(tok, records) -> int:
    """Generation budget that fits every reference answer: the longest one's tokens + 8."""
    return max(len(tok(r["output"], add_special_tokens=False)["input_ids"]) for r in records) + 8


def evaluate(model: nn.Module, tok, records, task: str | None, *, batch_size: int = 32,
             max_new_tokens: int | None = None) -> EvalResult:
    """Exact match and per-field scores of greedy answers on `records` (a Dataset or list of dicts).

    Records are checked first (data.check_records: which record, which field). task "orders" or
    "sql" stops each answer at its end and scores fields; any other name (your own data) or None
    scores exact match only (field_scores is empty) and stops at EOS.
    max_new_tokens: None = the longest reference + 8 tokens; rows stop earlier at their answer's end.
    """
    if isinstance(records, (list, tuple)) and not records or getattr(records, "num_rows", None) == 0:
        raise ValueError("evaluate got no records: pass a split, e.g. data.load_split('orders', 'test')")
    records = data.check_records(records, source="evaluate records")
    known = task if task in ANSWER_ENDS else None  # a learner's own task: exact match only
    refs = [r["output"] for r in records]
    preds = generate(model, tok, records, task=known, batch_size=batch_size,
                     max_new_tokens=max_new_tokens or answer_room(tok, records))
    hits: dict[str, int] = {}
    for p, ref in zip(preds, refs) if known else ():
        want, got = data.parse_fields(known, ref) or {}, data.parse_fields(known, p) or {}
        for k, v in want.items():
            hits[k] = hits.get(k, 0) + (got.get(k) == v)
    n = len(records)
    return EvalResult(exact_match=sum(p == r for p, r in zip(preds, refs)) / n,
                      field_scores={k: v / n for k, v in hits.items()}, n=n, predictions=preds,
                      references=refs, inputs=[r["input"] for r in records])


# --- losses --------------------------------------------------------------------------------

@torch.no_grad()
def text_nll(model: nn.Module, batches: Iterable[dict]) -> tuple[float, int]:
    """Token-weighted mean negative log-likelihood over batches {input_ids, attention_mask, labels}.

    exp(nll) is the perplexity. Batches move to the model's device. Returns (nll, predicted tokens).
    """
    param = next(model.parameters(), None)
    total, count = 0.0, 0
    for batch in batches:
        if param is not None:
            batch = {k: v.to(param.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch["labels"]
        n = int((labels[:, 1:] != data.IGNORE_INDEX).sum())  # the model shifts labels by one inside
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
        total += out.loss.float().item() * n
        count += n
    if count == 0:
        raise ValueError("no labelled tokens: give batches whose labels are not all -100")
    return total / count, count


def answer_loss(model: nn.Module, tok, records, *, batch_size: int = 16, max_length: int = 256) -> float:
    """Held-out loss: mean cross-entropy per answer token (prompt tokens masked, as in training)."""
    if isinstance(records, (list, tuple)) and not records or getattr(records, "num_rows", None) == 0:
        raise ValueError("answer_loss got no records: pass a split, e.g. data.load_split('orders', 'validation')")
    records = data.check_records(records, source="answer_loss records")
    was_training = model.training
    model.eval()
    collate = data.Collator(tok.pad_token_id)
    batches = (collate([data.encode(tok, r, max_length) for r in records[i:i + batch_size]])
               for i in range(0, len(records), batch_size))
    try:
        loss, _ = text_nll(model, batches)  # token-weighted over batches, not a mean of batch means
    finally:
        model.train(was_training)
    return loss
