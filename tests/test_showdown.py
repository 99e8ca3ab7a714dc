"""The showdown (peftlab.showdown); its verdicts are tested in tests/test_ledger.py.

Compared: the plan against the fairness rules (same steps, batch, seeds; only full FT's lr
differs); summary means/stds against hand-computed ones on tiny fake runs; one real smoke run's counted memory terms
against the trainable parameters' bytes (gradients = 1×, AdamW states = 2×, adapter file ≈ 1×);
a plan's configs against the profile it was made for (never the session's dtype).
"""
import math
from dataclasses import replace

import pytest
import torch

from peftlab import settings, showdown, viz


def _run(method, seed, em, mem, step, r=8, trainable=100, fields=None):
    return dict(method=method, r=r, seed=seed, exact_match=em, field_scores=fields or {"a": em, "b": 1.0},
                trainable=trainable, total=1000, adapter_bytes=4 * trainable, mem_counted=mem,
                peak_rss_delta=mem, peak_cuda=None, median_step_s=step, final_loss=0.1,
                mem_weights=mem // 2, mem_gradients=mem // 8, mem_optimizer=mem // 4, mem_activations=mem // 8)


def _rows(dora_em=(0.8, 0.82, 0.84), qlora_mem=500, dora_step=1.5, dora_trainable=110):
    runs = []
    for s in range(3):
        runs += [_run("full", s, 0.5, 4000, 3.0, trainable=1000), _run("lora", s, 0.5 + 0.02 * s, 1000, 1.0),
                 _run("qlora", s, 0.5 + 0.02 * s, qlora_mem, 1.3),
                 _run("dora", s, dora_em[s], 1020, dora_step, trainable=dora_trainable)]
    return showdown.summary({"runs": runs})


def test_plan_is_fair():
    plan = showdown.plan(settings.resolve("cpu"))
    cfgs = plan.configs()
    assert len(cfgs) == len(plan.methods) * len(plan.seeds) + 2 * len([k for k in plan.sweep_ranks if k != plan.r])
    assert len(plan.seeds) >= 3
    assert {c.max_steps for c in cfgs} == {plan.max_steps} and {c.batch_size for c in cfgs} == {plan.batch_size}
    assert {c.lr for c in cfgs if c.method != "full"} == {plan.lr}
    assert {c.lr for c in cfgs if c.method == "full"} == {plan.full_lr}
    assert all(c.alpha == 2 * c.r for c in cfgs)
    sweep = sorted((c.method, c.r) for c in cfgs if c.seed == plan.seeds[0] and c.method in ("lora", "dora"))
    assert sweep == [("dora", 2), ("dora", 8), ("dora", 32), ("lora", 2), ("lora", 8), ("lora", 32)]


def test_a_plan_keeps_its_own_profiles_dtype(monkeypatch):
    session = replace(settings.resolve("cpu"), compute_dtype="fp16", model="session/model")
    monkeypatch.setattr(settings, "profile", lambda: session)  # another profile is the session's
    mine = replace(settings.resolve("smoke"), compute_dtype="bf16")
    plan = showdown.plan(mine)
    assert (plan.compute_dtype, plan.model, plan.device) == ("bf16", mine.model, mine.device)
    assert {(c.compute_dtype, c.dtype, c.model) for c in plan.configs()} == {("bf16", torch.bfloat16, mine.model)}
    bare = showdown.Plan(profile="cpu", seeds=(0,))          # e.g. rebuilt from an older results file
    cpu = settings.resolve("cpu")
    assert {(c.compute_dtype, c.model) for c in bare.configs()} == {(cpu.compute_dtype, cpu.model)}
    assert cpu.compute_dtype != "fp16"                       # so the session's could not leak in unseen


def test_plan_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        showdown.Plan(profile="smoke", methods=("lora", "ia3"))


def test_load_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ValueError, match="benchmarks/showdown.py"):
        showdown.load(tmp_path / "nope.json")


def test_summary_means_and_stds():
    rows = {x["method"]: x for x in _rows()}
    assert rows["full"]["r"] == 0 and rows["lora"]["n_seeds"] == 3
    assert rows["lora"]["exact_match"] == pytest.approx(0.52)
    assert rows["lora"]["exact_match_std"] == pytest.approx(0.02)
    assert rows["dora"]["field_mean"] == pytest.approx((0.82 + 1.0) / 2)
    runs = [_run("lora", 0, 0.1, 1, 1.0, r=2), _run("lora", 0, 0.3, 1, 1.0, r=8)]
    assert [x["exact_match"] for x in showdown.summary({"runs": runs}, r=2)] == [0.1]


def test_figures_carry_the_numbers():
    rows = _rows()
    fig = viz.score_vs_cost(rows, "mem_counted", "MiB", "t", scale=1 / 2**20)
    assert [t.name for t in fig.data] == [x["method"] for x in rows]
    assert fig.data[1].error_y.array[0] == pytest.approx(0.02)
    stack = viz.memory_stack(rows)
    assert sum(t.y[0] for t in stack.data) == pytest.approx(sum(rows[0][f"mem_{k}"] for k in
                                                                ("weights", "gradients", "optimizer",
                                                                 "activations")) / 2**20)
    sweep = viz.rank_sweep({"lora": ([2, 8, 32], [0.1, 0.2, 0.3])})
    assert list(sweep.data[0].y) == [0.1, 0.2, 0.3]


def test_one_real_run_counts_its_memory(embedded_ready, tmp_path):
    plan = showdown.plan(settings.resolve("smoke"))
    cfg = plan.config("lora", 2, 0)
    row = showdown.run_one(cfg, eval_n=1, workdir=tmp_path, max_new_tokens=2)
    trainable_bytes = row["trainable"] * 4                                  # fp32 adapters
    assert 0 < row["trainable"] < row["total"]
    assert row["mem_gradients"] == trainable_bytes
    assert row["mem_optimizer"] == 2 * trainable_bytes                      # AdamW: exp_avg, exp_avg_sq
    assert trainable_bytes <= row["adapter_bytes"] < trainable_bytes + 200_000  # safetensors + config
    assert row["mem_activations"] > 0 and row["steps"] == 1
    assert row["mem_counted"] == sum(row[f"mem_{k}"] for k in ("weights", "gradients", "optimizer", "activations"))
    assert math.isfinite(row["median_step_s"]) and 0 <= row["exact_match"] <= 1


def test_merge_joins_shards_and_counts_a_run_once(tmp_path):
    import json

    meta = dict(plan={"r": 8}, wall_s=10.0)
    a = dict(meta=meta, runs=[_run("lora", 0, 0.5, 1, 1.0), _run("dora", 0, 0.6, 1, 1.0)])
    b = dict(meta=dict(meta, wall_s=30.0), runs=[_run("lora", 0, 0.9, 1, 1.0), _run("full", 0, 0.7, 1, 1.0)])
    for name, res in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    out = showdown.merge([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "all.json")
    # joined in the plan's order (methods full, lora, qlora, dora, qdora), the duplicate lora once
    assert [(x["method"], x["exact_match"]) for x in out["runs"]] == [("full", 0.7), ("lora", 0.5), ("dora", 0.6)]
    assert out["meta"]["wall_s"] == 30.0 and out["meta"]["processes"] == 2
    assert showdown.missing(out, showdown.Plan(profile="cpu", seeds=(0,), sweep_ranks=(8,))) == [
        ("qlora", 8, 0), ("qdora", 8, 0)]
    (tmp_path / "c.json").write_text(json.dumps(dict(meta=dict(plan={"r": 2}, wall_s=1.0), runs=[])))
    with pytest.raises(ValueError, match="different plans"):
        showdown.merge([tmp_path / "a.json", tmp_path / "c.json"], tmp_path / "x.json")
