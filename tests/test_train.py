"""peftlab.train: the recipe's configs vs the seed's advice (C16); gradients into layer-0 LoRA
weights after an evaluation pass on a 4-bit model (the bitsandbytes CPU pitfall); an interrupted
and resumed run vs an uninterrupted one (same losses); an atomic adapter save vs a crash mid-save;
the 4-bit merge (dequantize, then merge) vs the adapter on the 4-bit base (same logits); exact
match and per-field scores vs hand-counted ones. Real embedded model, tiny batches."""
from __future__ import annotations

import json

import pytest
import torch

from peftlab import data, train

TINY = dict(target_modules=("q_proj", "v_proj"), batch_size=2, grad_accum=1, max_steps=2,
            compute_dtype="fp32", gradient_checkpointing=False, lr=1e-3, train_examples=8)


def tiny(**kw) -> train.TrainConfig:
    return train.recipe(**{**TINY, **kw})


@pytest.fixture(scope="module")
def records():
    return data.validate_file(data.task_path("orders", "test"))[:3]


def test_seed_defaults_are_the_seed_recipe():
    c = train.seed_defaults()
    assert (c.r, c.alpha, c.dropout, c.lr, c.batch_size, c.grad_accum) == (16, 32, 0.05, 2e-4, 4, 4)
    assert c.target_modules == train.ATTENTION and c.gradient_checkpointing
    assert train.seed_defaults(r=8).r == 8


@pytest.mark.parametrize("kw, msg", [(dict(method="ia3"), "method must be one of"),
                                     (dict(task="nope"), "task must be one of"),
                                     (dict(r=0), "r must be"), (dict(compute_dtype="int8"), "compute_dtype"),
                                     (dict(target_modules=()), "target_modules is empty")])
def test_config_validation_says_what_to_do(kw, msg):
    with pytest.raises(ValueError, match=msg):
        train.TrainConfig(**kw)


def test_lora_in_layer0_gets_gradients_after_an_eval_pass(embedded_ready, records):
    cfg = tiny(method="qlora", target_modules=("q_proj",))
    model, tok = train.build_model(cfg)
    train.generate(model, tok, records[:2], max_new_tokens=2)  # eval-mode forwards, no grad
    model.train()
    batch = data.Collator(tok.pad_token_id)([data.encode(tok, r) for r in records[:2]])
    model(**batch).loss.backward()
    b0 = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight  # A gets 0 (B=0)
    assert b0.grad is not None and b0.grad.abs().sum() > 0


def test_resume_after_interrupt_matches_an_uninterrupted_run(embedded_ready, tmp_path):
    cfg = tiny(method="lora", max_steps=3, save_steps=1)
    model, tok = train.build_model(cfg)
    ref = train.train(cfg, model, tok, tmp_path / "ref", disable_tqdm=True)
    model, tok = train.build_model(cfg)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, model, tok, tmp_path / "run", callbacks=[train.InterruptAt(2)], disable_tqdm=True)
    assert train.last_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    (tmp_path / "run" / "checkpoint-3").mkdir()  # a half-written checkpoint must be skipped
    assert train.last_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    model, tok = train.build_model(cfg)
    res = train.train(cfg, model, tok, tmp_path / "run", resume=True, disable_tqdm=True)
    assert res.global_step == 3 and len(res.step_times) == 1  # only step 3 ran again
    assert res.losses[-1] == pytest.approx(ref.losses[-1], rel=1e-4)


def test_save_adapter_is_atomic(tmp_path):
    class Fake:
        def __init__(self, crash):
            self.crash = crash

        def save_pretrained(self, d):
            (d / "adapter_model.safetensors").write_text("half" if self.crash else "new")
            if self.crash:
                raise OSError("disk full")

    path = train.save_adapter(Fake(False), tmp_path / "adapter")
    with pytest.raises(OSError):
        train.save_adapter(Fake(True), path)
    assert (path / "adapter_model.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left behind
    train.save_adapter(Fake(False), path)
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_merge_4bit_equals_adapter_on_4bit_base(embedded_ready, tmp_path, records):
    cfg = tiny(method="qlora")
    model, tok = train.build_model(cfg)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.02)  # B = 0 at init would make any merge look right
    train.save_adapter(model, tmp_path / "a")
    merged = train.merge_4bit(tmp_path / "a", cfg)
    batch = data.Collator(tok.pad_token_id)([data.encode(tok, r) for r in records])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = model.get_base_model()
        with model.disable_adapter():
            plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert (want - plain).abs().max() > 0.1  # the adapter changes the outputs...
    assert (want - got).abs().max() < 2e-3   # ...and the merged dense model reproduces them


def test_evaluate_scores_exact_match_and_fields(monkeypatch, records):
    refs = [r["output"] for r in records]
    wrong_qty = json.dumps({**json.loads(refs[1]), "qty": 99})
    monkeypatch.setattr(train, "generate", lambda *a, **k: [refs[0], wrong_qty, "not json"])

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    ev = train.evaluate(None, Tok(), records, "orders")
    assert ev.n == 3 and ev.exact_match == pytest.approx(1 / 3)
    assert ev.field_scores["qty"] == pytest.approx(1 / 3) and ev.field_scores["name"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no records"):
        train.evaluate(None, Tok(), [], "orders")


def test_step_timer_median():
    t = train.StepTimer()
    t.times = [3.0, 1.0, 2.0]
    assert t.median == 2.0


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def test_step_time_and_checkpointing_toggle():
    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 8))
    batch = {"input_ids": ids, "labels": ids}
    t = train.step_time(model, batch, repeats=2)
    assert 0 < t < 5 and not model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="repeats"):
        train.step_time(model, batch, repeats=0)
    # transformers ≥ 5 renamed is_gradient_checkpointing to is_activation_checkpointing
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    train.set_checkpointing(model, True)
    assert getattr(model, flag)
    train.set_checkpointing(model, False)
    assert not getattr(model, flag)


def test_answer_loss_counts_answer_tokens_only_and_ignores_padding(embedded_ready, records):
    model, tok = train.build_model(tiny(method="full"))
    one = [train.answer_loss(model, tok, [r]) for r in records]
    n = [sum(t != data.IGNORE_INDEX for t in data.encode(tok, r)["labels"][1:]) for r in records]
    want = sum(l * k for l, k in zip(one, n)) / sum(n)  # token-weighted, not a mean of batch means
    assert train.answer_loss(model, tok, records, batch_size=3) == pytest.approx(want, rel=1e-4)
    assert 0 < want < 20
    with pytest.raises(ValueError, match="no records"):
        train.answer_loss(model, tok, [])
