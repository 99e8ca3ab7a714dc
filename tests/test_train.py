"""peftlab.train: gradients into layer-0 LoRA weights after an evaluation pass on a 4-bit model
(the bitsandbytes CPU pitfall); an interrupted and resumed run vs an uninterrupted one (same
losses); the model lands on the config's device and dtype; step timing and the checkpointing
toggle on a tiny Llama. Real embedded model, tiny batches. (Configs: test_recipe.py; adapters
and checkpoints on disk: test_adapters.py; generation and scores: test_evaluate.py.)"""
from __future__ import annotations

import pytest
import torch

from peftlab import adapters, data, evaluate, models, recipe, train

TINY = dict(target_modules=("q_proj", "v_proj"), batch_size=2, grad_accum=1, max_steps=2,
            compute_dtype="fp32", gradient_checkpointing=False, lr=1e-3, train_examples=8)


def tiny(**kw) -> recipe.TrainConfig:
    return recipe.recipe(**{**TINY, **kw})


@pytest.fixture(scope="module")
def records():
    return data.validate_file(data.task_path("orders", "test"))[:3]


def test_lora_in_layer0_gets_gradients_after_an_eval_pass(embedded_ready, records):
    cfg = tiny(method="qlora", target_modules=("q_proj",))
    model, tok = train.build_model(cfg)
    evaluate.generate(model, tok, records[:2], max_new_tokens=2)  # eval-mode forwards, no grad
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
    assert adapters.last_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    (tmp_path / "run" / "checkpoint-3").mkdir()  # a half-written checkpoint must be skipped
    assert adapters.last_checkpoint(tmp_path / "run").endswith("checkpoint-2")
    model, tok = train.build_model(cfg)
    res = train.train(cfg, model, tok, tmp_path / "run", resume=True, disable_tqdm=True)
    assert res.global_step == 3 and len(res.step_times) == 1  # only step 3 ran again
    assert res.losses[-1] == pytest.approx(ref.losses[-1], rel=1e-4)


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
    models.set_checkpointing(model, True)
    assert getattr(model, flag)
    models.set_checkpointing(model, False)
    assert not getattr(model, flag)


def test_model_follows_the_config_not_the_session(embedded_ready, monkeypatch):
    from peftlab import settings

    monkeypatch.setattr(settings, "profile", lambda: pytest.fail("build_model read the session profile"))
    cfg = recipe.TrainConfig(method="lora", compute_dtype="bf16", device="cpu", target_modules=("q_proj",))
    model, _ = train.build_model(cfg)
    base = model.get_base_model().model.layers[0].self_attn.k_proj.weight
    assert base.dtype == torch.bfloat16 and base.device.type == "cpu"


def test_matmul_time_is_positive_and_checks_its_arguments():
    assert train.matmul_time(torch.float32, n=64, repeats=1) > 0
    with pytest.raises(ValueError, match="≥ 1"):
        train.matmul_time(torch.float32, n=0)
