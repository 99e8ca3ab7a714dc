"""Full fine-tuning in standard mixed precision: the setting most readers of a fine-tuning guide run.

    pure bf16 AdamW:  2 (weights) + 2 (grads) + 2·2 (m, v in bf16)            =  8 bytes/param
    mixed precision:  2 (bf16 copy) + 4 (fp32 master) + 2 (grads) + 2·4 (m, v) = 16 bytes/param

Micikevicius et al. 2018, "Mixed Precision Training" (arXiv:1710.03740): fp32 master weights,
16-bit compute; the 16 bytes/param accounting is ZeRO's (Rajbhandari et al. 2020, arXiv:1910.02054,
§3.1). `terms.estimate(method="full")` models the pure-bf16 case (states in the parameter dtype);
this adds the fp32 master copy and fp32 AdamW states on top of it. Activations do not change.
"""
from __future__ import annotations

from dataclasses import replace

from .spec import DTYPES, Estimate
from .terms import estimate

MASTER_BYTES = 4      # fp32 master copy of every trained weight
STATE_BYTES = 4       # AdamW's m and v in fp32


def mixed_precision(model, **kw) -> Estimate:
    """The full fine-tuning estimate with fp32 master weights and fp32 AdamW states (16 bytes/param
    + activations). Takes the same arguments as `vram.estimate`; `method` must be full (or omitted)."""
    if kw.get("method", "full") != "full":
        raise ValueError("mixed_precision models full fine-tuning: leave method out (adapters already "
                         "train in fp32 in PEFT, see vram.estimate)")
    if kw.get("optimizer", "adamw") != "adamw":
        raise ValueError("mixed_precision models AdamW: leave optimizer out")
    est = estimate(model, **{**kw, "method": "full"})
    if DTYPES[est.settings.dtype] == 4:
        return est                                     # fp32 training already keeps fp32 everything
    n = est.breakdown["trainable params"] // DTYPES[est.settings.dtype]
    bd = dict(est.breakdown)
    bd["master weights (fp32)"] = MASTER_BYTES * n
    bd["optimizer"] = 2 * STATE_BYTES * n
    order = ["weights", "trainable params", "master weights (fp32)", "gradients", "optimizer"]
    bd = {k: bd[k] for k in order + [k for k in bd if k not in order]}
    return replace(est, breakdown=bd)


def bytes_per_param(est: Estimate) -> float:
    """Weights + master + gradients + optimizer per trained parameter (8 pure bf16, 16 mixed)."""
    b = est.breakdown
    n = b["trainable params"] / DTYPES[est.settings.dtype]
    return (b["trainable params"] + b.get("master weights (fp32)", 0) + b["gradients"] + b["optimizer"]) / n
