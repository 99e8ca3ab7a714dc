"""Notebook 05's exercises: a VRAM estimate by hand — the parameter terms of a LoRA step, and the
weights of a QLoRA base.

    weights = 2·N (bf16)      adapters = 4 · Σ_targets L · r · (in + out)      grads = adapters      AdamW = 2 · adapters
    QLoRA weights = Σ_linears n · (4 + c)/8  +  4 · (N − Σ_linears n),   c = 0.5 or 0.127 bit/param (double quant)

The reference is `vram.estimate(...).breakdown` (hf stack: PEFT keeps adapters in fp32 and
`prepare_model_for_kbit_training` upcasts what is not quantized to fp32). A hint names the term
that is off. Solutions: notebooks/solutions/05_vram_planner.py.
"""
from __future__ import annotations

from collections.abc import Callable

from .. import vram
from ._verdict import call, exercise, report, same

NOTEBOOK = "05_vram_planner"
TERMS = ("weights", "trainable params", "gradients", "optimizer")
RTOL = 1e-3  # the estimator also counts a few kB (rotary tables, code tables) a hand count leaves out


def _lora(a: vram.Arch, r: int, targets: list[str], w: int = 2, ad: int = 4, states: int = 2,
          square: bool = False, layers: bool = True) -> dict[str, float]:
    """The four terms counted by hand, and its usual slips (fp32 base, bf16 adapters, one state, …)."""
    dims = a.linears()
    n = sum(r * (a.hidden + a.hidden if square else sum(dims[t])) for t in targets) * (a.layers if layers else 1)
    return {"weights": w * a.n_params(), "trainable params": ad * n, "gradients": ad * n,
            "optimizer": states * 4 * n}


_LORA_CASES = [("llama-2-7b", 8, ["q_proj", "v_proj"]), ("mistral-7b", 16, ["q_proj", "k_proj", "v_proj", "o_proj"])]
_LORA_HINTS = {
    "weights": {"fp32": "the base is bf16: 2 bytes per parameter, not 4"},
    "trainable params": {"bf16": "PEFT keeps the adapters in fp32 (4 bytes each), even on a bf16 base",
                         "square": "k_proj and v_proj of a GQA model (Mistral: 8 KV heads) are hidden → "
                                   "kv_heads·head_dim = 4096 → 1024: use (in, out) = arch.linears()[name]",
                         "layers": "that is one layer's adapters: every one of arch.layers blocks has them"},
    "optimizer": {"one": "AdamW keeps TWO states (m and v) per trainable number, 4 bytes each: 8 bytes",
                  "bf16": "AdamW's states follow the fp32 adapters: 2 × 4 bytes per trainable number"},
}


@exercise(NOTEBOOK, "my_lora_terms")
def check_lora_terms(fn: Callable[..., dict]) -> bool:
    """Exercise 1: `fn(arch, rank, targets)` = {weights, trainable params, gradients, optimizer} in bytes
    for LoRA with a bf16 base and AdamW (vram.estimate(..., method="lora", dtype="bf16"))."""
    for model, r, targets in _LORA_CASES:
        a = vram.resolve(model)
        got, why = call(fn, (a, r, list(targets)), "arch.n_params(), arch.layers and arch.linears() "
                        "({name: (in, out)}) are all you need")
        if why:
            return report(f"fn({model}, {r}, {targets}) {why}", "")
        if not isinstance(got, dict) or not set(TERMS) <= set(got):
            return report(f"return a dict with the keys {list(TERMS)} (bytes), got "
                          f"{sorted(got) if isinstance(got, dict) else type(got).__name__}", "")
        ref = vram.estimate(a, method="lora", rank=r, targets=list(targets), dtype="bf16", optimizer="adamw").breakdown
        slips = {"fp32": _lora(a, r, targets, w=4), "bf16": _lora(a, r, targets, ad=2, states=1),
                 "square": _lora(a, r, targets, square=True), "layers": _lora(a, r, targets, layers=False),
                 "one": _lora(a, r, targets, states=1)}
        for term in TERMS:
            g = got[term]
            if isinstance(g, bool) or not isinstance(g, (int, float)):
                return report(f"{term} must be a number of bytes, got {g!r}", "")
            if same(g, ref[term], RTOL):
                continue
            hints = _LORA_HINTS.get(term, _LORA_HINTS["trainable params"])  # gradients: like the adapters
            hint = next((h for k, h in hints.items() if same(g, slips[k][term], RTOL)), None)
            if hint is None:
                hint = f"off by a factor {g / ref[term]:.3g}" if ref[term] else "expected 0"
            return report(f"{model}, r={r} on {','.join(targets)}: the {term!r} term is {g / 1e9:.4g} GB, "
                          f"the estimator says {ref[term] / 1e9:.4g} GB — {hint}", "")
    return report(None, "all four parameter terms agree with vram.estimate (LLaMA-2-7B q,v and Mistral-7B "
                        "q,k,v,o with GQA)")


def _qlora_weights(a: vram.Arch, dq: bool, bits: float | None = None, rest: int = 4, all_4bit: bool = False) -> float:
    lin = sum(i * o for i, o in a.linears().values()) * a.layers
    c = (8 / 64 + 32 / (64 * 256) if dq else 32 / 64) if bits is None else bits
    if all_4bit:
        return a.n_params() * (4 + c) / 8
    return lin * (4 + c) / 8 + rest * (a.n_params() - lin)


@exercise(NOTEBOOK, "my_qlora_weights")
def check_qlora_weights(fn: Callable[..., float]) -> bool:
    """Exercise 2: `fn(arch, double_quant)` = bytes of the weights of a QLoRA base
    (vram.estimate(..., method="qlora").breakdown["weights"])."""
    for model in ("llama-2-7b", "llama-3-8b"):
        a = vram.resolve(model)
        for dq in (True, False):
            got, why = call(fn, (a, dq), "the decoder's linears are in arch.linears() ({name: (in, out)}), "
                            "once per layer; arch.n_params() counts everything")
            if why:
                return report(f"fn({model}, double_quant={dq}) {why}", "")
            if isinstance(got, bool) or not isinstance(got, (int, float)):
                return report(f"return the number of bytes, got {got!r}", "")
            ref = vram.estimate(a, method="qlora", double_quant=dq).breakdown["weights"]
            if same(got, ref, RTOL):
                continue
            slips = {
                "what is not quantized (embeddings, norms, lm_head) is fp32 after PEFT's "
                "prepare_model_for_kbit_training: 4 bytes, not 2": _qlora_weights(a, dq, rest=2),
                "only the decoder's linear layers are 4-bit: embeddings, norms and lm_head stay dense (fp32 "
                "after prepare_model_for_kbit_training)": _qlora_weights(a, dq, all_4bit=True),
                "the absmax constants are missing: + 0.5 bit/param (one fp32 per 64 weights), 0.127 with "
                "double quantization": _qlora_weights(a, dq, bits=0),
                "double_quant is ignored: with it the constants cost 0.127 bit/param, without it 0.5":
                    _qlora_weights(a, not dq),
            }
            hint = next((h for h, v in slips.items() if same(got, v, RTOL)), f"off by a factor {got / ref:.3g}")
            return report(f"{model}, double_quant={dq}: your weights {got / 1e9:.4g} GB, the estimator says "
                          f"{ref / 1e9:.4g} GB — {hint}", "")
    return report(None, "NF4 linears + constants + the fp32 rest, as vram.estimate counts them (±0.1%)")
