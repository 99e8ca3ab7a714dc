"""Per-GPU memory when one step runs on N GPUs: DDP replicates everything, FSDP (ZeRO-3) shards it.

    DDP          per GPU = W + P + G + O + activations(b) + temporaries + buckets (≈ G)
    FSDP         per GPU = (W − C)/N + C + (P + G + O)/N + gathered + activations(b) + temporaries
    FSDP+offload per GPU = C + gathered + activations(b) + temporaries;  (W − C + P + G + O)/N in CPU RAM
    gathered     = root unit (embeddings, lm_head, final norm) + 2 blocks' weights and adapters
                   (the one computing, the one prefetched) + 1 block's unsharded gradients

W weights, P trainable (adapter) parameters, G gradients, O optimizer states, C the NF4 quantization
constants (absmax, code tables): bitsandbytes keeps them in each layer's `quant_state`, outside the
parameters FSDP shards, so every rank holds all of them. Activations depend on the micro-batch b
each GPU runs, not on N. ZeRO: Rajbhandari et al. 2020, arXiv:1910.02054 (§5, stage 3 = FSDP);
PyTorch FSDP: Zhao et al. 2023, arXiv:2304.11277; FSDP + QLoRA: Answer.AI 2024 (4-bit weights
stored in a float dtype, `bnb_4bit_quant_storage`, so FSDP can flatten and shard them).

Public API:
    STRATEGIES = ("ddp", "fsdp")
    shard(est, gpus=1, strategy="ddp", cpu_offload=False) -> Estimate   the per-GPU estimate
    per_block(est) -> dict    bytes of one decoder block: weights, constants, trainable, gradients
"""
from __future__ import annotations

import math
from dataclasses import replace

from .spec import DTYPES, Estimate, STACKS
from .terms import _nf4_bytes  # the one count of NF4 bytes (codes + constants)

STRATEGIES = ("ddp", "fsdp")


def per_block(est: Estimate) -> dict:
    """Bytes of one decoder block: `weights` FSDP shards and gathers (dense weights or packed 4-bit
    codes, norms, biases), `constants` it leaves whole on every rank (NF4 absmax and code tables),
    and the block's share of the trainable parameters and their gradients."""
    a, s = est.arch, est.settings
    st = STACKS[s.stack]
    quant = s.method in ("qlora", "qdora")
    lin = a.linears()
    dense_w = 4 if (quant and st.kbit_fp32_stream) else DTYPES[s.dtype]
    small = a.hidden * (1 if a.rmsnorm else 2) * (1 if a.shared_norm else 2)
    small += sum(o for n, (_, o) in lin.items() if a.has_bias(n))
    if quant:
        codes = sum(math.ceil(i * o / 2) for i, o in lin.values())
        consts = sum(_nf4_bytes(i * o, s.double_quant) for i, o in lin.values()) - codes
        weights = codes + small * dense_w
    else:
        consts, weights = 0, sum(i * o for i, o in lin.values()) * DTYPES[s.dtype] + small * DTYPES[s.dtype]
    bd = est.breakdown
    if s.method == "full":  # the block's own weights are the trainable ones
        share = weights / max(1, bd["trainable params"]) if bd["trainable params"] else 0
        return {"weights": weights, "constants": 0, "trainable": weights,
                "gradients": bd["gradients"] * share}
    return {"weights": weights, "constants": consts, "trainable": bd["trainable params"] / a.layers,
            "gradients": bd["gradients"] / a.layers}


def shard(est: Estimate, gpus: int = 1, strategy: str = "ddp", cpu_offload: bool = False) -> Estimate:
    """The per-GPU estimate of `est` (one GPU's step at its micro-batch) on `gpus` data-parallel
    GPUs. `detail` gets gpus, strategy, cpu_offload and `cpu_ram` (bytes offloaded per GPU).
    gpus=1 with DDP is `est` itself."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a whole number ≥ 1, got {gpus!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if cpu_offload and strategy != "fsdp":
        raise ValueError("CPU offload shards states to CPU RAM: it needs strategy='fsdp'")
    bd = dict(est.breakdown)
    detail = {**est.detail, "gpus": gpus, "strategy": strategy, "cpu_offload": cpu_offload, "cpu_ram": 0}
    if strategy == "ddp":
        if gpus > 1:  # the reducer's flat buckets hold a second copy of the gradients for all-reduce
            bd["ddp buckets"] = bd["gradients"]
        return replace(est, breakdown={k: int(v) for k, v in bd.items()}, detail=detail)
    blk = per_block(est)
    layers = est.arch.layers
    consts = blk["constants"] * layers
    shardable = bd["weights"] - consts
    if est.settings.method == "full":
        root = bd["trainable params"] - blk["weights"] * layers
    else:
        root = shardable - blk["weights"] * layers
    gathered = max(0, root) + 2 * (blk["weights"] + blk["trainable"]) + blk["gradients"]
    states = {"trainable params": bd["trainable params"], "gradients": bd["gradients"],
              "optimizer": bd["optimizer"]}
    if cpu_offload:
        detail["cpu_ram"] = int((shardable + sum(states.values())) / gpus)
        bd.update({"weights": consts, **{k: 0 for k in states}})
    else:
        bd.update({"weights": consts + shardable / gpus, **{k: v / gpus for k, v in states.items()}})
    bd["fsdp gathered"] = gathered
    return replace(est, breakdown={k: int(v) for k, v in bd.items()}, detail=detail)
