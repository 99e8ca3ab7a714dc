"""The seed guide's claims C1–C18 (docs/claims.md) and the rule that decides each from measured numbers.

    verdict(claim, numbers) -> (verdict, deciding text),   verdict ∈ {FAILS, NUANCE, HOLDS} in words

Each rule is written next to its claim in `RULES`, thresholds stated; `verdict` is the one place
where a level becomes a word. The numbers come from results/claims/<id>.json, written by the
notebook that measured them (`ledger.record`); `ledger.table` renders them.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

# The seed's claims, shortened (each in full, with the original sentence: docs/claims.md).
CLAIMS = {
    "C1": "Full fine-tuning LLaMA-2-7B needs about 60 GB+ of GPU memory",
    "C2": "With LoRA/QLoRA/DoRA a 16 GB GPU is enough",
    "C3": "LoRA: W' = W + BA, W frozen, r ≪ d",
    "C4": "LLaMA-7B, r=8 on q,v: trainable 4.2M / 6.7B / 0.06%",
    "C5": "LoRA trains under 0.1% of the parameters",
    "C6": "A merged adapter adds no inference latency",
    "C7": "Adapters for different tasks swap on one base",
    "C8": "LoRA still loads the whole model in 16 bits",
    "C9": "NF4 optimal for normal weights; double quant; paged optimizers",
    "C10": "Memory table 7B 60/30/10 GB, 13B 120/55/16, 65B 500/250/80",
    "C11": "An RTX 4090 (24 GB) can QLoRA a 13B model",
    "C12": "QLoRA cuts memory to about one third",
    "C13": "DoRA: W' = m·(W+BA)/‖W+BA‖, m trainable",
    "C14": "DoRA beats LoRA by 5–15% with the same parameter count",
    "C15": "Star table: memory, performance, speed, GPU need of LoRA / QLoRA / DoRA",
    "C16": "Start with r=16, α=2r, dropout 0.05, attention, lr 2e-4, 4×4, fp16/bf16",
    "C17": "On a 24 GB card use QLoRA with gradient checkpointing",
    "C18": "Start with QLoRA as the baseline, then DoRA or LoRA as needed",
}

# The seed's summary table (claim C15), translated: higher stars = better.
STARS = {"memory efficiency": {"lora": "★★★", "qlora": "★★★★★", "dora": "★★★"},
         "performance": {"lora": "★★★", "qlora": "★★★", "dora": "★★★★"},
         "training speed": {"lora": "fast", "qlora": "medium", "dora": "medium"},
         "GPU need": {"lora": "24 GB+", "qlora": "10 GB+", "dora": "24 GB+"}}

FAILS, NUANCE, HOLDS = 0, 1, 2      # verdict levels; their words live in `verdict` only


class Rule(NamedTuple):
    notebooks: str                                   # where the numbers are measured
    rule: str                                        # the rule in words, thresholds stated
    needs: tuple                                     # number keys the rule cannot do without
    decide: Callable[[dict], tuple[int, str]]        # numbers -> (level, deciding text)


def _pct(x: float) -> str:
    return f"{x:.2f}%" if x < 10 else f"{x:.0f}%"


def _c1(n):
    mixed, bf16 = n["full_mixed_gb"], n["full_bf16_gb"]
    text = (f"7B full FT, 4×512, checkpointing: {mixed:.0f} GB in mixed precision (fp32 master + AdamW states, "
            f"16 B/param), {bf16:.0f} GB in pure bf16 (8 B/param)")
    level = HOLDS if 48 <= mixed <= 72 else NUANCE if mixed > 72 else FAILS
    return level, text + ("; 60 GB+ is the floor of pure bf16, a mixed-precision reader needs ~"
                          f"{mixed / 60:.1f}× that" if level == NUANCE else "")


def _c2(n):
    fits = n["fits_16gb"]
    ok = [m for m, f in fits.items() if f]
    text = "7B at 1×512 (ckpt) on a 16 GB card: " + ", ".join(
        f"{m} {n['need_gb'][m]:.1f} GB {'fits' if fits[m] else 'does not fit'}" for m in fits)
    level = HOLDS if len(ok) == len(fits) else NUANCE if ok else FAILS
    return level, (f"for {' and '.join(ok)} only — " if level == NUANCE else "") + text


def _exact(n, what, tol_out=1e-4, tol_grad=1e-6):
    match = n["max_logit_diff"] <= tol_out and n.get("max_grad_diff", 0) <= tol_grad
    s = n["scaling"]
    text = (f"{what}; ours = PEFT (outputs {n['max_logit_diff']:.0e}, grads {n.get('max_grad_diff', 0):.0e}); "
            f"the update is scaled by α/r = {s:g}, which the seed's formula leaves out")
    return (NUANCE if s != 1 else HOLDS) if match else FAILS, text


def _c4(n):
    t, a = n["trainable"], n["total"]
    ok = round(t / 1e6, 1) == 4.2 and round(a / 1e9, 1) == 6.7 and f"{100 * t / a:.2f}" == "0.06"
    return HOLDS if ok else FAILS, f"PEFT: {t:,} of {a:,} trainable = {100 * t / a:.4f}%"


def _c5(n):
    big = n["share_7b_qv_r8"]
    small = {k: v for k, v in n.items() if k.startswith("share_small")}
    label = {"share_small_qv_r8": "q,v r=8 (nb 01)", "share_small_attention_r16": "attention r=16 (nb 00)",
             "share_small_all_linear": "all linears (nb 06)"}
    text = f"LLaMA-2-7B r=8 q,v: {_pct(big)}" + "".join(f"; 135M model {label.get(k, k)} {_pct(v)}"
                                                        for k, v in sorted(small.items()))
    if "settings_under" in n:
        text += f"; {n['settings_under']} of {n['settings_total']} LLaMA-2 settings (size × targets × r) stay under 0.1%"
    return (FAILS if big >= 0.1 else HOLDS if all(v < 0.1 for v in small.values()) else NUANCE), \
        text + " — the share shrinks with width"


def _c6(n):
    same = n["flops_merged"] == n["flops_base"]
    ok = same and n["max_logit_rel_diff"] <= 1e-4
    ratio = f"; measured merged latency {n['latency_ratio_merged']:.2f}× base" if "latency_ratio_merged" in n else ""
    return HOLDS if ok else FAILS, (f"merged FLOPs {'=' if same else '≠'} base FLOPs; merged vs unmerged logits "
                                    f"within {n['max_logit_rel_diff']:.0e} (relative){ratio}")


def _c7(n):
    ok = n["base_unchanged"] and n["outputs_differ"]
    text = (f"{n['adapters']} adapters on one base switched by name: outputs differ {n['outputs_differ']}, "
            f"base weights unchanged {n['base_unchanged']}")
    wins = True
    if "swap_scores" in n:                 # nb 04: {adapter: {task: exact match}}
        s = n["swap_scores"]
        wins = s["orders"]["orders"] > s["sql"]["orders"] and s["sql"]["sql"] > s["orders"]["sql"]
        text += (f"; nb 04 on one 4-bit base: orders {s['orders']['orders']:.0%} (orders adapter) vs "
                 f"{s['sql']['orders']:.0%} (sql adapter), sql {s['sql']['sql']:.0%} vs {s['orders']['sql']:.0%}")
    return (HOLDS if wins else NUANCE) if ok else FAILS, text


def _c8(n):
    w = n["weights_16bit_gb"]
    over = (w["llama-2-13b"] > 24) + (w["llama-65b"] > 80)
    text = "16-bit weights alone: " + ", ".join(f"{_size(k)} {v:.0f} GB" for k, v in w.items())
    if "small_4bit_over_bf16" in n:
        text += f"; the embedded model's 4-bit weights are {n['small_4bit_over_bf16']:.0%} of bf16"
    return (HOLDS if over == 2 else NUANCE if over else FAILS), text + " (13B > 24 GB, 65B > 80 GB cards)"


def _c9(n):
    best = n["nf4_best_on_normal"]
    dq_ok = abs(n["dq_bits_per_param"] - 0.127) < 0.01
    text = (f"NF4 bit-exact with bitsandbytes {n['nf4_bitexact']}; relative error on normal weights "
            f"NF4 {n['err_normal']['nf4']:.4f} / FP4 {n['err_normal']['fp4']:.4f} / Int4 {n['err_normal']['int4']:.4f}")
    if "err_embedded" in n:
        e = n["err_embedded"]
        text += f"; on the Q4_1-origin weights NF4 {e['nf4']:.4f} / FP4 {e['fp4']:.4f} / Int4 {e['int4']:.4f}"
    text += f"; double quant 0.5 → {n['dq_bits_per_param']:.3f} bit/param; paging shown {n.get('paging_shown', False)}"
    if not (best and n["nf4_bitexact"] and dq_ok):
        return FAILS, text
    return (HOLDS if n.get("paging_shown") else NUANCE), text + (" (best of three, not proven optimal)")


def _size(model: str) -> str:
    return model.rsplit("-", 1)[-1].upper()             # llama-2-13b -> 13B


def _c10(n):
    lines, less, within = [], [], 0
    for model, cell in n["cells"].items():
        for method, seed, est in zip(("full", "lora", "qlora"), cell["seed"], cell["est"]):
            ratio = seed / est
            within += 0.8 <= ratio <= 1.2
            if ratio < 0.8:
                less.append(f"{_size(model)} {method} {seed} vs {est:.0f}")
    total = 3 * len(n["cells"])
    text = (f"{within} of {total} cells within ±20% of the estimate (full FT in mixed precision)"
            + (f"; too low (you would run out of memory): {', '.join(less)} GB" if less else "")
            + "; pure-bf16 full FT: " + ", ".join(f"{_size(k)} {c['full_bf16']:.0f}" for k, c in n["cells"].items())
            + " GB")
    return (HOLDS if within == total else FAILS if less else NUANCE), text


def _c11(n):
    return (HOLDS if n["fits_24gb"] else FAILS), f"13B QLoRA at 1×2048 with checkpointing: {n['qlora13b_gb']:.1f} GB"


_SMALL = {"weights_small": "135M weights (nb 00)", "training_small": "135M whole training, counted (nb 06)"}


def _c12(n):
    r = dict(n["qlora_over_lora"])
    r.update({k: v for k, v in n.items() if k in ("weights_small", "training_small")})
    band = {k: 0.25 <= v <= 0.42 for k, v in r.items()}
    text = "QLoRA/LoRA " + ", ".join(f"{_size(k) if k.startswith('llama') else _SMALL[k]} {v:.3f}"
                                 + ("✓" if band[k] else "") for k, v in r.items()) + " (✓ about a third: 0.25–0.42)"
    return (HOLDS if all(band.values()) else NUANCE if any(band.values()) else FAILS), text


def _c14(n):
    d = n["dora_em"] - n["lora_em"]
    sd = math.sqrt((n["dora_std"] ** 2 + n["lora_std"] ** 2) / 2)
    rel = d / max(n["lora_em"], 1e-9)
    level = (HOLDS if d > sd and 0.05 <= rel <= 0.15 and n["extra_params"] == 0 else NUANCE if d > sd else FAILS)
    paper = ""
    if "paper_commonsense" in n:                       # nb 03: what the DoRA paper reports
        p = n["paper_commonsense"]
        paper = (f"the seed's table matches no published source; the paper: LLaMA-7B commonsense LoRA {p['lora']} vs "
                 f"DoRA {p['dora']} (+{p['dora'] - p['lora']:.1f} points); measured here: ")
    return level, paper + (f"EM DoRA {n['dora_em']:.2f} ± {n['dora_std']:.2f} vs LoRA {n['lora_em']:.2f} ± {n['lora_std']:.2f} "
                   f"({rel:+.0%}; seeds' spread {sd:.2f}); DoRA trains {n['extra_params']:,} more params at "
                   f"{n['step_ratio']:.2f}× LoRA's step time")


def _c15(n):
    ok, tot = n["cells_agree"], n["cells_total"]
    return (HOLDS if ok == tot else NUANCE if ok else FAILS), (
        f"{ok} of {tot} star cells agree with the measurement" + (f"; not: {', '.join(n['disagree'])}" if n.get("disagree") else ""))


def _c16(n):
    seed, kit, base, seen = n["seed_em"], n["kit_em"], n["base_em"], n["examples_seen"]
    text = (f"after {seen} examples seen: the seed's recipe {seed:.0%} exact match, the kit's (all linears, "
            f"lr {n['kit_lr']:g}) {kit:.0%}, base {base:.0%}")
    if seed >= kit - 0.1:
        return HOLDS, text
    if seed <= base + 0.1 and seen >= 10_000:
        return FAILS, text
    return NUANCE, text + " — too slow to learn within a short CPU budget, not refuted by it"


def _c17(n):
    text = f"13B QLoRA at 1×2048: {n['ckpt_gb']:.1f} GB with checkpointing, {n['no_ckpt_gb']:.1f} GB without"
    cost = n.get("ckpt_step_ratio")
    if cost:
        text += f"; checkpointing costs {cost:.2f}× step time (nb 04)"
    if not n["fits_ckpt"]:
        return FAILS, text
    return (HOLDS if n["fits_no_ckpt"] is False and (not cost or cost <= 1.05) else NUANCE), text


def _c18(n):
    d = n["qlora_em"] - n["lora_em"]
    sd = max(math.sqrt((n["qlora_std"] ** 2 + n["lora_std"] ** 2) / 2), 0.01)
    text = (f"QLoRA EM {n['qlora_em']:.2f} ± {n['qlora_std']:.2f} vs LoRA {n['lora_em']:.2f} ± {n['lora_std']:.2f} "
            f"at {n['mem_ratio']:.2f}× the memory, {n['step_ratio']:.2f}× the step time (135M model; where the 16-bit "
            "base dominates, nb 05, QLoRA is what fits)")
    return (FAILS if d < -sd else HOLDS if n["mem_ratio"] < 0.9 and abs(d) <= sd else NUANCE), text


RULES = {
    "C1": Rule("05", "holds if the mixed-precision estimate (the setting a reader runs) is 48–72 GB (60 ± 20%); "
               "with a nuance if above 72 GB (60 GB+ is then only a floor); else does not hold",
               ("full_mixed_gb", "full_bf16_gb"), _c1),
    "C2": Rule("05", "holds if every method fits a 16 GB card (15% headroom + CUDA context); with a nuance if "
               "some do (named); else does not hold", ("fits_16gb", "need_gb"), _c2),
    "C3": Rule("01", "ours = PEFT (logits ≤ 1e-4, grads ≤ 1e-6): holds, with a nuance if α/r ≠ 1",
               ("max_logit_diff", "scaling"), lambda n: _exact(n, "B is (out×r), A is (r×in)")),
    "C4": Rule("01", "holds if PEFT's count rounds to 4.2M / 6.7B / 0.06%", ("trainable", "total"), _c4),
    "C5": Rule("00, 01, 06", "does not hold if 7B q,v r=8 is ≥ 0.1%; holds if every share measured is < 0.1%; "
               "else with a nuance", ("share_7b_qv_r8",), _c5),
    "C6": Rule("01", "holds if merged FLOPs = base FLOPs and merged logits = unmerged within 1e-4 (relative)",
               ("flops_merged", "flops_base", "max_logit_rel_diff"), _c6),
    "C7": Rule("01, 04", "holds if switching adapters changes the output and leaves the base unchanged (nb 01) and "
               "each of nb 04's adapters wins its own task; with a nuance if they do not",
               ("adapters", "base_unchanged", "outputs_differ"), _c7),
    "C8": Rule("00, 05", "holds if 16-bit weights alone exceed a 24 GB card at 13B and an 80 GB card at 65B",
               ("weights_16bit_gb",), _c8),
    "C9": Rule("02", "does not hold unless NF4 has the lowest error of Int4/FP4/NF4 on normal weights, is "
               "bit-exact and double quant gives 0.127 ± 0.01 bit; holds only if paging was shown (CUDA)",
               ("nf4_bitexact", "nf4_best_on_normal", "err_normal", "dq_bits_per_param"), _c9),
    "C10": Rule("05", "each cell: seed / estimate within 0.8–1.2; holds if all 9 are, does not hold if any seed "
                "number is < 0.8× (out of memory), else with a nuance (the seed asks too much)", ("cells",), _c10),
    "C11": Rule("05", "holds if the estimate fits 24 GB (15% headroom + CUDA context)", ("qlora13b_gb", "fits_24gb"),
                _c11),
    "C12": Rule("00, 05, 06", "QLoRA/LoRA within 0.25–0.42: holds if every ratio is, with a nuance if some are",
                ("qlora_over_lora",), _c12),
    "C13": Rule("03", "ours = PEFT use_dora (outputs and grads ≤ 1e-5): holds, with a nuance if α/r ≠ 1",
                ("max_logit_diff", "scaling"),
                lambda n: _exact(n, "one norm per output row, detached in backward (§4.3)", 1e-5, 1e-5)),
    "C14": Rule("03, 06", "holds if DoRA − LoRA > the seeds' spread, +5–15% and no extra params; with a nuance if "
                "beyond the spread only", ("dora_em", "dora_std", "lora_em", "lora_std", "extra_params"), _c14),
    "C15": Rule("06", "holds if every star cell agrees with the measurement, with a nuance if some do",
                ("cells_agree", "cells_total"), _c15),
    "C16": Rule("04", "holds if the seed's recipe gets within 0.1 of the kit's exact match at the same examples "
                "seen; does not hold only if it stays at the base's score after ≥ 10,000 examples; else with a nuance",
                ("seed_em", "kit_em", "base_em", "examples_seen"), _c16),
    "C17": Rule("04, 05", "holds if 13B QLoRA fits 24 GB only with checkpointing and it costs ≤ 5% step time; "
                "with a nuance if it fits without or costs more", ("ckpt_gb", "no_ckpt_gb", "fits_ckpt"), _c17),
    "C18": Rule("06", "does not hold if QLoRA scores below LoRA beyond the seeds' spread; holds if within it at "
                "< 0.9× the memory", ("qlora_em", "lora_em", "mem_ratio"), _c18),
}


def verdict(claim: str, numbers: dict) -> tuple[str, str]:
    """(verdict, deciding text) for `claim` from its measured `numbers`, by RULES[claim].rule.

    The only place verdict words are written. Raises ValueError for an unknown claim or missing numbers."""
    if claim not in RULES:
        raise ValueError(f"unknown claim {claim!r}: use one of C1–C18")
    lacking = [k for k in RULES[claim].needs if k not in numbers]
    if lacking:
        raise ValueError(f"{claim} needs {', '.join(lacking)} (measured in notebook {RULES[claim].notebooks})")
    level, text = RULES[claim].decide(numbers)
    return {HOLDS: "holds", NUANCE: "holds with a nuance", FAILS: "does not hold"}[level], text
