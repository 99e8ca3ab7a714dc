"""Bad training inputs vs the one-line message that names the field and the fix (issue 19, classes 3
and 7, and training on a learner's own data).

Compared: every TrainConfig field given a wrong type or value (negative, fractional, boolean,
string, out of range, an optimizer name Trainer does not know) against a ValueError raised at
creation, before any model loads, naming the field and what it allows; PEFT's spellings of
target_modules against the tuple they mean. Resuming: a real one-step checkpoint (trained on a
learner's own records with mixed-type extra fields, task=None) against configs that differ from
it (DoRA, rank, α, targets, 4-bit base), damaged copies of it (adapter and optimizer cut short)
and output_dir mistakes (a checkpoint folder itself, earlier checkpoints that would be
overwritten, a file) — each refused before training with what differs and what to do.
Evaluation on records without `output` and on a learner's own task name.
"""
from __future__ import annotations

import json
import shutil

import pytest
from transformers.training_args import OptimizerNames

from peftlab import adapters, evaluate, recipe, train

T = recipe.TrainConfig


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --- class 3: the config is checked whole, at creation ---------------------------------------

@pytest.mark.parametrize("kw, field, allowed", [
    (dict(lr=-1e-4), "lr", "> 0 and < 1"),
    (dict(lr=0), "lr", "0 trains nothing"),
    (dict(lr=float("nan")), "lr", "> 0"),
    (dict(lr=5.0), "lr", "< 1"),
    (dict(lr="2e-4"), "lr", "a number"),
    (dict(lr=True), "lr", "a number"),
    (dict(r=8.5), "r", "whole number ≥ 1"),
    (dict(r=True), "r", "whole number ≥ 1"),
    (dict(alpha=0), "alpha", "> 0"),
    (dict(alpha="32"), "alpha", "a number"),
    (dict(dropout=1.0), "dropout", "≥ 0 and < 1"),
    (dict(dropout=-0.1), "dropout", "≥ 0 and < 1"),
    (dict(warmup_steps=-1), "warmup_steps", "whole number ≥ 0"),
    (dict(warmup_steps=2.5), "warmup_steps", "whole number ≥ 0"),
    (dict(optimizer="adam"), "optimizer", "OptimizerNames"),
    (dict(optimizer="AdamW"), "optimizer", "adamw_torch"),
    (dict(train_examples=-5), "train_examples", "≥ 1 or None"),
    (dict(train_examples=0), "train_examples", "≥ 1 or None"),
    (dict(save_steps=-1), "save_steps", "≥ 0 (0: none)"),
    (dict(save_steps=1000), "save_steps", "no checkpoint would be written"),
    (dict(logging_steps=0), "logging_steps", "whole number ≥ 1"),
    (dict(logging_steps=1000), "logging_steps", "no loss would be logged"),
    (dict(batch_size=2.0), "batch_size", "whole number ≥ 1"),
    (dict(max_steps=1.5), "max_steps", "whole number ≥ 1"),
    (dict(max_length=True), "max_length", "whole number ≥ 1"),
    (dict(seed=-1), "seed", "whole number ≥ 0"),
    (dict(weight_decay=-0.1), "weight_decay", "≥ 0 and < 1"),
    (dict(gradient_checkpointing="no"), "gradient_checkpointing", "True or False"),
    (dict(double_quant=1), "double_quant", "True or False"),
    (dict(quant_type="int4"), "quant_type", "nf4, fp4"),
    (dict(task="order"), "task", "or None to train on your own records"),
    (dict(model=None), "model", "'embedded', a local folder or a hub id"),
    (dict(target_modules=5), "target_modules", "'all-linear', a comma string"),
    (dict(target_modules=["q_proj", ""]), "target_modules", "module names like 'q_proj'"),
    (dict(target_modules=["all-linear", "q_proj"]), "target_modules", "give it alone"),
    (dict(target_modules=""), "target_modules", "is empty"),
])
def test_a_bad_field_is_refused_at_creation_naming_field_and_allowed_values(kw, field, allowed):
    with pytest.raises(ValueError) as err:
        T(**kw)
    msg = _one_line(err)
    assert msg.startswith(field) and allowed in msg, msg
    assert repr(next(iter(kw.values())))[:6] in msg or field == "target_modules", msg  # shows what was given


def test_every_bad_field_is_named_in_one_line():
    with pytest.raises(ValueError) as err:
        T(r=0, lr=0, dropout=2, optimizer="adam")
    msg = _one_line(err)
    for field in ("r must", "lr must", "dropout must", "optimizer must"):
        assert field in msg, msg


@pytest.mark.parametrize("given, stored, peft", [
    ("all-linear", ("all-linear",), "all-linear"),               # PEFT's own spelling, not letters
    ("q_proj,v_proj", ("q_proj", "v_proj"), ["q_proj", "v_proj"]),
    (" q_proj , v_proj ", ("q_proj", "v_proj"), ["q_proj", "v_proj"]),
    ("q_proj", ("q_proj",), ["q_proj"]),
    (["q_proj", "v_proj", "q_proj"], ("q_proj", "v_proj"), ["q_proj", "v_proj"]),
    (recipe.ATTENTION, recipe.ATTENTION, list(recipe.ATTENTION)),
])
def test_peft_spellings_of_target_modules(given, stored, peft):
    c = T(target_modules=given)
    assert c.target_modules == stored and recipe.lora_targets(c) == peft
    assert recipe.config_dict(c)["target_modules"] == ",".join(stored)
    assert recipe.recipe(target_modules=given).target_modules == stored


def test_optimizer_names_are_transformers_own():
    for name in OptimizerNames:
        assert T(optimizer=name.value).optimizer == name.value


def test_valid_edges_pass():
    assert T(dropout=0, warmup_steps=0, save_steps=0, alpha=16.5, train_examples=None, task=None).task is None
    assert T(lr=1e-6, max_steps=1, logging_steps=1, save_steps=1).save_steps == 1


def test_task_none_needs_records():
    with pytest.raises(ValueError) as err:
        train.train(T(task=None), None, None, "unused")
    msg = _one_line(err)
    assert "train_records=" in msg and "data.load_files" in msg


# --- training on a learner's own records, and the checkpoint the resume tests start from --------

TINY = dict(method="lora", task=None, target_modules="q_proj", r=4, alpha=8, batch_size=2, grad_accum=1,
            max_steps=1, save_steps=1, lr=1e-3, compute_dtype="fp32", gradient_checkpointing=False, max_length=64)


def _own_records():
    mixed = [7, "seven", {"a": 1}, None]  # extra fields of mixed types: one Arrow column could not hold them
    return [{"id": f"r{i}", "instruction": "Repeat the word.", "input": w, "output": w, "note": mixed[i]}
            for i, w in enumerate(["tea", "milk", "rice", "salt"])]


@pytest.fixture(scope="module")
def run(embedded_ready, tmp_path_factory):
    """A one-step LoRA run on own records (task=None) with a checkpoint at step 1."""
    cfg = T(**TINY)
    model, tok = train.build_model(cfg)
    out = tmp_path_factory.mktemp("own") / "run"
    res = train.train(cfg, model, tok, out, train_records=_own_records(), disable_tqdm=True)
    return cfg, out, res


def test_own_records_with_mixed_extra_fields_train(run):
    cfg, out, res = run
    assert res.global_step == 1 and res.losses and res.losses[0] > 0
    ck = adapters.last_checkpoint(out)
    assert ck.endswith("checkpoint-1")
    assert json.loads((out / "checkpoint-1" / adapters.CONFIG_FILE).read_text())["method"] == "lora"


def test_a_matching_config_resumes(run):
    cfg, out, _ = run
    assert adapters.resume_point(out, T(**{**TINY, "max_steps": 2}), resume=True).endswith("checkpoint-1")


@pytest.mark.parametrize("change, says", [
    (dict(method="dora"), "method: checkpoint 'lora', config 'dora'"),
    (dict(method="qlora"), "method: checkpoint 'lora', config 'qlora'"),
    (dict(r=8), "r: checkpoint 4, config 8"),
    (dict(alpha=16), "alpha: checkpoint 8, config 16"),
    (dict(target_modules="q_proj,v_proj"), "target_modules: checkpoint 'q_proj', config 'q_proj,v_proj'"),
    (dict(model="HuggingFaceTB/SmolLM2-360M-Instruct"), "model: checkpoint 'embedded'"),
])
def test_resuming_with_another_config_says_what_differs(run, change, says):
    cfg, out, _ = run
    with pytest.raises(ValueError) as err:
        train.train(T(**{**TINY, **change}), None, None, out, resume=True)  # refused before the model is used
    msg = _one_line(err)
    assert says in msg and "checkpoint-1 was trained with another config" in msg and "resume=False" in msg


def test_a_checkpoint_without_our_config_is_compared_by_its_adapter_config(run, tmp_path):
    _, out, _ = run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "checkpoint-1" / adapters.CONFIG_FILE).unlink()  # as written by an older kit
    with pytest.raises(ValueError) as err:
        adapters.resume_point(old, T(**{**TINY, "method": "dora", "r": 8}), resume=True)
    msg = _one_line(err)
    assert "method: checkpoint LoRA, config 'dora'" in msg and "r: checkpoint 4, config 8" in msg


@pytest.mark.parametrize("name, says", [("adapter_model.safetensors", "adapter_model.safetensors has"),
                                        ("optimizer.pt", "optimizer.pt is cut short")])
def test_a_damaged_checkpoint_is_named_before_resuming(run, tmp_path, name, says):
    _, out, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    f = bad / "checkpoint-1" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        train.train(T(**TINY), None, None, bad, resume=True)
    msg = _one_line(err)
    assert "checkpoint-1 is damaged" in msg and says in msg and "delete that folder" in msg


@pytest.mark.parametrize("resume", [True, False])
def test_output_dir_that_is_a_checkpoint_is_refused_with_its_parent(run, resume):
    _, out, _ = run
    with pytest.raises(ValueError) as err:
        train.train(T(**TINY), None, None, out / "checkpoint-1", resume=resume)
    msg = _one_line(err)
    assert "is itself a checkpoint folder" in msg and f"pass its parent {out}" in msg


def test_earlier_checkpoints_are_not_overwritten_by_a_fresh_run(run):
    _, out, _ = run
    before = sorted(p.name for p in (out / "checkpoint-1").iterdir())
    with pytest.raises(ValueError) as err:
        train.train(T(**TINY), None, None, out, resume=False)
    msg = _one_line(err)
    assert "already holds checkpoints" in msg and "checkpoint-1" in msg and "resume=True" in msg
    assert sorted(p.name for p in (out / "checkpoint-1").iterdir()) == before


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ValueError) as err:
        train.train(T(**TINY), None, None, tmp_path / "f")
    assert "is a file" in _one_line(err) and (tmp_path / "f").read_text() == "mine"


def test_a_copied_checkpoint_folder_is_ignored(run, tmp_path):
    _, out, _ = run
    cp = tmp_path / "cp"
    shutil.copytree(out, cp)
    shutil.copytree(cp / "checkpoint-1", cp / "checkpoint-2 (copy)")
    assert adapters.last_checkpoint(cp).endswith("checkpoint-1")


def test_target_modules_that_match_no_layer_name_the_real_ones(embedded_ready):
    with pytest.raises(ValueError) as err:
        train.build_model(T(**{**TINY, "target_modules": "qproj"}))
    msg = _one_line(err)
    assert "match no layer" in msg and "q_proj" in msg and "all-linear" in msg


def test_all_linear_adapts_every_linear_but_the_head(embedded_ready):
    model, _ = train.build_model(T(**{**TINY, "target_modules": "all-linear"}))
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(recipe.ALL_LINEAR)


# --- evaluation on a learner's own data ----------------------------------------------------------

class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_evaluate_names_a_record_without_output():
    recs = [{"id": "a", "instruction": "", "input": "x"}]
    with pytest.raises(ValueError) as err:
        evaluate.evaluate(None, _Tok(), recs, "orders")
    msg = _one_line(err)
    assert "[0] (id 'a')" in msg and "missing field(s) output" in msg


@pytest.mark.parametrize("task", ["recipes", None])
def test_evaluate_on_an_own_task_scores_exact_match_only(monkeypatch, task):
    seen = {}

    def fake_generate(model, tok, records, task=None, **kw):
        seen["task"] = task
        return ["tea", "wrong"]

    monkeypatch.setattr(evaluate, "generate", fake_generate)
    recs = [{"id": str(i), "instruction": "", "input": w, "output": w, "extra": i} for i, w in enumerate(["tea", "milk"])]
    ev = evaluate.evaluate(None, _Tok(), recs, task)
    assert ev.exact_match == 0.5 and ev.field_scores == {} and seen["task"] is None
