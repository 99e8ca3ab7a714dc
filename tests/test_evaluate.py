"""peftlab.evaluate: where an answer ends vs every reference answer in data/ (the stop never cuts
a right answer); generation with the stop vs without it on a scripted model that answers
correctly (same strings) and one that rambles after the answer (stops at the answer, fewer
forward passes); exact match and per-field scores vs hand-counted ones; text_nll and
answer_loss vs token-weighted sums computed by hand (not a mean of batch means)."""
from __future__ import annotations

import json

import pytest
import torch

from peftlab import data, evaluate, recipe, train


@pytest.fixture(scope="module")
def records():
    return data.validate_file(data.task_path("orders", "test"))[:3]


# --- where an answer ends ------------------------------------------------------------------

def test_answer_ends_cover_every_task():
    assert set(evaluate.ANSWER_ENDS) == set(data.TASKS)


@pytest.mark.parametrize("task", data.TASKS)
def test_every_reference_ends_exactly_at_its_last_character(task):
    for split in data.SPLITS:
        for rec in data.validate_file(data.task_path(task, split)):
            out = rec["output"]
            assert evaluate.answer_end(task, out) == len(out), rec["id"]
            assert evaluate.answer_end(task, out[:-1]) is None, rec["id"]  # not before it either


@pytest.mark.parametrize("text, end", [
    ('{"a": 1}', 8), ('{"a": {"b": 2}} and more', 15), ('{"a": "}{"}', 11), ('{"a": "\\"}"}', 12),
    ('{"a": 1', None), ("  ", None), ("", None),
    ("The order is here. More", 18), ("Sure!\nmore", 5), ("```json\n{", 8), ("The order", None),
])
def test_orders_end(text, end):
    assert evaluate.answer_end("orders", text) == end


@pytest.mark.parametrize("text, end", [
    ("SELECT a FROM t;", 16), ("SELECT a FROM t; SELECT", 16), ("SELECT a FROM t WHERE n = 'x;y';", 32),
    ("SELECT a FROM t WHERE n = 'O''Neil';", 36), ("SELECT a FROM t", None),
])
def test_sql_end(text, end):
    assert evaluate.answer_end("sql", text) == end


def test_unknown_task_says_what_to_do():
    with pytest.raises(ValueError, match="use one of orders, sql"):
        evaluate.answer_end("nope", "x")
    with pytest.raises(ValueError, match="one per record"):
        evaluate.generate(None, None, [{}, {}], task=["orders"])


# --- generation stops at the answer's end --------------------------------------------------

@pytest.fixture(scope="module")
def scripted(embedded_ready):
    """A tiny Llama whose logits spell a scripted continuation per row (real generate, real cache)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftlab import models

    tok = models.load_tokenizer()

    class Scripted(LlamaForCausalLM):
        scripts: list[list[int]] = []   # per row: the token ids to emit, the last one repeated
        prompt_len = calls = 0

        def forward(self, input_ids=None, attention_mask=None, **kw):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)
            if input_ids.shape[1] > 1:                      # the prefill: the whole left-padded prompt
                self.prompt_len = input_ids.shape[1]
            self.calls += 1
            k = attention_mask.shape[1] - self.prompt_len   # tokens generated so far
            logits = torch.full((input_ids.shape[0], out.logits.shape[1], len(tok)), -1e4)
            for i, script in enumerate(self.scripts):
                logits[i, -1, script[min(k, len(script) - 1)]] = 0.0
            out.logits = logits
            return out

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id)
    return Scripted(cfg).eval(), tok


def _recs():
    orders = data.validate_file(data.task_path("orders", "test"))[:3]
    sql = data.validate_file(data.task_path("sql", "test"))[:2]
    return orders + sql, ["orders"] * 3 + ["sql"] * 2


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_right_answers_are_the_same_with_and_without_the_stop(scripted):
    model, tok = scripted
    recs, tasks = _recs()
    model.scripts = [_ids(tok, r["output"]) + [tok.eos_token_id] for r in recs]
    without = evaluate.generate(model, tok, recs, task=None, max_new_tokens=60)
    with_stop = evaluate.generate(model, tok, recs, task=tasks, max_new_tokens=60)
    assert without == with_stop == [r["output"] for r in recs]


def test_a_rambling_model_stops_at_the_answer_end(scripted):
    model, tok = scripted
    recs, tasks = _recs()
    ramble = _ids(tok, "\n\nThis query lists what was asked for, and then it goes on and on")
    model.scripts = [_ids(tok, r["output"]) + ramble * 4 for r in recs]  # never an EOS
    model.calls = 0
    without = evaluate.generate(model, tok, recs, task=None, max_new_tokens=60)
    calls_without, model.calls = model.calls, 0
    with_stop = evaluate.generate(model, tok, recs, task=tasks, max_new_tokens=60)
    assert with_stop == [r["output"] for r in recs]               # each row stopped at its own end
    assert all(w.startswith(r["output"]) and len(w) > len(r["output"]) for w, r in zip(without, recs))
    longest = max(len(_ids(tok, r["output"])) for r in recs)
    assert calls_without == 60 and model.calls == longest          # one forward per new token


def test_prose_stops_after_its_first_sentence(scripted):
    model, tok = scripted
    recs, _ = _recs()
    model.scripts = [_ids(tok, "The order is for tea. It comes on Friday. And more") for _ in recs[:2]]
    assert evaluate.generate(model, tok, recs[:2], task="orders", max_new_tokens=30) == ["The order is for tea."] * 2


# --- scores and losses ---------------------------------------------------------------------

def test_evaluate_scores_exact_match_and_fields(monkeypatch, records):
    refs = [r["output"] for r in records]
    wrong_qty = json.dumps({**json.loads(refs[1]), "qty": 99})
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: [refs[0], wrong_qty, "not json"])

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    ev = evaluate.evaluate(None, Tok(), records, "orders")
    assert ev.n == 3 and ev.exact_match == pytest.approx(1 / 3)
    assert ev.field_scores["qty"] == pytest.approx(1 / 3) and ev.field_scores["name"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no records"):
        evaluate.evaluate(None, Tok(), [], "orders")


def test_text_nll_is_token_weighted():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels):
            return type("Out", (), {"loss": torch.tensor(float(input_ids.shape[1]))})()

    ign = -100
    b1 = {"input_ids": torch.zeros(1, 3), "attention_mask": None, "labels": torch.tensor([[1, 2, 3]])}
    b2 = {"input_ids": torch.zeros(1, 5), "attention_mask": None, "labels": torch.tensor([[ign, 1, ign, ign, ign]])}
    nll, n = evaluate.text_nll(Fixed(), [b1, b2])
    assert n == 3 and nll == pytest.approx((3 * 2 + 5 * 1) / 3)
    with pytest.raises(ValueError, match="no labelled tokens"):
        evaluate.text_nll(Fixed(), [{**b1, "labels": torch.full((1, 3), ign)}])


def test_answer_loss_counts_answer_tokens_only_and_ignores_padding(embedded_ready, records):
    cfg = recipe.recipe(method="full", target_modules=("q_proj",), compute_dtype="fp32", max_steps=1)
    model, tok = train.build_model(cfg)
    one = [evaluate.answer_loss(model, tok, [r]) for r in records]
    n = [sum(t != data.IGNORE_INDEX for t in data.encode(tok, r)["labels"][1:]) for r in records]
    want = sum(l * k for l, k in zip(one, n)) / sum(n)  # token-weighted, not a mean of batch means
    assert evaluate.answer_loss(model, tok, records, batch_size=3) == pytest.approx(want, rel=1e-4)
    assert 0 < want < 20
    with pytest.raises(ValueError, match="no records"):
        evaluate.answer_loss(model, tok, [])
