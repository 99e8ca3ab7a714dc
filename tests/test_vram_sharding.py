"""`vram.sharding`: the per-GPU estimate on N GPUs, term by term, against the single-GPU estimate.

Compared: DDP (everything replicated, + one bucket copy of the gradients) and FSDP (weights without
the NF4 constants, adapters, gradients and optimizer states divided by N; constants whole; one
gathered working set) against `vram.estimate` on one GPU; CPU offload moving the sharded states to
CPU RAM; the CLI's and the planner's multi-GPU controls; bad inputs as one-line ValueErrors.
The per-rank *measurement* (FSDP2 on 2 CPU processes) is notebook 07's.
"""
import json

import pytest

from peftlab import cli, vram
from peftlab.vram import planner, sharding

KW = dict(method="qlora", rank=8, targets="all-linear", seq_len=2048, batch=2, grad_ckpt=True)


@pytest.fixture(scope="module")
def one():
    return vram.estimate("llama-2-70b", **KW)


def test_one_gpu_ddp_is_the_single_gpu_estimate(one):
    assert sharding.shard(one, 1, "ddp").breakdown == one.breakdown


def test_ddp_replicates_and_adds_buckets(one):
    two = sharding.shard(one, 2, "ddp").breakdown
    assert {k: two[k] for k in one.breakdown} == one.breakdown
    assert two["ddp buckets"] == one.breakdown["gradients"]


@pytest.mark.parametrize("n", [2, 4, 8])
def test_fsdp_divides_states_by_n_and_keeps_constants_whole(one, n):
    blk = sharding.per_block(one)
    consts = blk["constants"] * one.arch.layers
    got = sharding.shard(one, n, "fsdp").breakdown
    b = one.breakdown
    assert consts > 0 and got["weights"] == int(consts + (b["weights"] - consts) / n)
    for k in ("trainable params", "gradients", "optimizer"):
        assert got[k] == int(b[k] / n)
    for k in ("activations", "temporaries", "cuda_context"):   # per micro-batch, not per N
        assert got[k] == b[k]
    root = b["weights"] - consts - blk["weights"] * one.arch.layers
    assert got["fsdp gathered"] == int(root + 2 * (blk["weights"] + blk["trainable"]) + blk["gradients"])


def test_block_weights_are_the_packed_codes(one):
    a = one.arch
    lin = sum(i * o for i, o in a.linears().values())
    blk = sharding.per_block(one)
    assert blk["weights"] == lin // 2 + 2 * a.hidden * 4          # 4-bit codes + 2 fp32 norms (HF k-bit stream)
    dense = sharding.per_block(vram.estimate("llama-2-70b", **{**KW, "method": "lora"}))
    assert dense["weights"] == (lin + 2 * a.hidden) * 2 and dense["constants"] == 0


def test_cpu_offload_moves_the_shards_to_cpu_ram(one):
    s = sharding.shard(one, 2, "fsdp", cpu_offload=True)
    assert s.breakdown["optimizer"] == s.breakdown["gradients"] == 0
    consts = sharding.per_block(one)["constants"] * one.arch.layers
    b = one.breakdown
    want = (b["weights"] - consts + b["trainable params"] + b["gradients"] + b["optimizer"]) / 2
    assert s.detail["cpu_ram"] == int(want)
    assert s.total < sharding.shard(one, 2, "fsdp").total < one.total


def test_full_fine_tuning_shards_too():
    e = vram.estimate("llama-2-7b", method="full", seq_len=512, batch=1)
    s = sharding.shard(e, 8, "fsdp").breakdown
    assert s["optimizer"] == e.breakdown["optimizer"] // 8 and s["fsdp gathered"] > 0


@pytest.mark.parametrize("kw, words", [
    (dict(gpus=0), "gpus must be"), (dict(gpus=2.5), "gpus must be"), (dict(gpus=True), "gpus must be"),
    (dict(strategy="zero"), "strategy must be one of ddp, fsdp"),
    (dict(strategy="ddp", cpu_offload=True), "needs strategy='fsdp'"),
])
def test_bad_inputs(one, kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        sharding.shard(one, **{"gpus": 2, **kw})


def test_cli_per_gpu(capsys):
    args = ["estimate", "--model", "llama-2-70b", "--method", "qlora", "--targets", "all-linear",
            "--seq-len", "2048", "--batch", "2", "--grad-ckpt"]
    assert cli.main(args + ["--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert cli.main(args + ["--gpus", "2", "--strategy", "fsdp", "--json"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["settings"]["gpus"] == 2 and two["total_bytes"] < single["total_bytes"]
    assert cli.main(args + ["--gpus", "2", "--strategy", "fsdp", "--cpu-offload"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("per GPU, 2 GPU(s) with FSDP, CPU offload") and "fsdp gathered" in out
    assert cli.main(args + ["--cpu-offload"]) == 2
    assert "needs strategy='fsdp'" in capsys.readouterr().err


def test_planner_controls():
    m = planner.PlannerModel(model="llama-2-70b", **KW)
    single = m.estimate.total
    view = planner.VRAMPlanner(m)
    view.n_gpus.value, view.strategy.value = 2, "fsdp"
    assert m.gpus == 2 and m.estimate.total < single and "per GPU (2 × FSDP)" in m.readout()
    view.cpu_offload.value = True
    assert m.estimate.breakdown["optimizer"] == 0
    view.strategy.value = "ddp"
    assert m.estimate is None and "fsdp" in m.message
