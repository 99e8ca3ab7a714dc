"""The claims ledger: the seed's claims C1–C18 (docs/claims.md) against what the kit measured.

    verdict ∈ {holds, holds with a nuance, does not hold, pending}, each with the number that decides it

C5, C12, C14, C15 and C18 are decided by the showdown's measurement (`showdown.summary` rows at
one rank, mean ± std over seeds); the rest by other notebooks, recorded in `LEDGER` with the
notebook that measures them ("pending" while that notebook has not landed). A score difference
counts only beyond the seeds' spread (pooled std of exact match over seeds).

Public API (notebook 06 and the README call these):
    CLAIMS {id: claim};  STARS (the seed's C15 table);  LEDGER (claims decided elsewhere)
    star_verdicts(rows) -> list[dict];  measured_claims(rows) -> {id: {verdict, number, notebook}}
    ledger(rows) -> list[dict] for C1–C18;  markdown_table(rows, columns) -> str
"""
from __future__ import annotations

import math

# The seed's claims, shortened (each in full, with where the kit checks it: docs/claims.md).
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


def _close(a: float, b: float, tol: float) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)


def star_verdicts(rows: list[dict], tol: float = 0.10) -> list[dict]:
    """Each C15 cell against the measurement: the seed's rating, what we measured, a verdict.

    A cell holds when the measured ordering against LoRA (the seed's ★3 reference) has the
    rating's direction: better beyond `tol` (relative) for more stars, within `tol` for equal
    stars. For scores, "beyond" means more than the seeds' spread (one pooled std).
    """
    by = {x["method"]: x for x in rows}
    if not {"lora", "qlora", "dora"} <= set(by):
        raise ValueError("star_verdicts needs lora, qlora and dora rows at one rank (summary(results, r=8))")
    base = by["lora"]
    out = []
    for m in ("lora", "qlora", "dora"):
        x = by[m]
        mem = x["peak_cuda"] or x["mem_counted"]
        rel_mem = mem / (base["peak_cuda"] or base["mem_counted"])
        rel_t = x["median_step_s"] / base["median_step_s"]
        d_em = x["exact_match"] - base["exact_match"]
        spread = math.sqrt((x["exact_match_std"] ** 2 + base["exact_match_std"] ** 2) / 2) or 0.01
        cells = {
            "memory efficiency": (f"{mem / 2**20:.0f} MiB ({rel_mem:.2f}× LoRA)",
                                  rel_mem < 1 - tol if m == "qlora" else _close(rel_mem, 1, tol)),
            "performance": (f"EM {x['exact_match']:.2f} ± {x['exact_match_std']:.2f}",
                            d_em > spread if m == "dora" else abs(d_em) <= spread),
            "training speed": (f"{x['median_step_s']:.2f} s/step ({rel_t:.2f}× LoRA)",
                               rel_t > 1 + tol if m != "lora" else
                               x["median_step_s"] <= (1 + tol) * min(by["qlora"]["median_step_s"],
                                                                     by["dora"]["median_step_s"])),
        }
        for aspect, (measured, ok) in cells.items():
            out.append(dict(aspect=aspect, method=m, seed=STARS[aspect][m], measured=measured,
                            verdict="reference" if m == "lora" and aspect != "training speed"
                            else ("holds" if ok else "does not hold")))
    return out


def gpu_need_verdicts(need_gb: dict[str, float]) -> list[dict]:
    """The C15 "GPU need" row against a planner estimate {method: GB a card must have}.

    holds when the need is within the seed's class (2/3 to 1× of its "X GB+"); holds with a
    nuance when the seed asks for too much (< 2/3) or a bit too little (≤ 1.2×); else does not hold.
    """
    out = []
    for m in ("lora", "qlora", "dora"):
        seed_gb = float(STARS["GPU need"][m].split()[0])
        ratio = need_gb[m] / seed_gb
        verdict = ("holds" if 2 / 3 <= ratio <= 1 else "holds with a nuance" if ratio < 2 / 3 or ratio <= 1.2
                   else "does not hold")
        out.append(dict(aspect="GPU need", method=m, seed=STARS["GPU need"][m],
                        measured=f"{need_gb[m]:.1f} GB (planner, 7B)", verdict=verdict))
    return out


def markdown_table(rows: list[dict], columns: dict[str, str]) -> str:
    """A Markdown table of `rows` with {key: header} columns (values already formatted or str()-ed)."""
    head = "| " + " | ".join(columns.values()) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(str(r.get(k, "")) for k in columns) + " |\n" for r in rows)


def _gap(rows: list[dict], a: str, b: str) -> tuple[float, float, float]:
    """(EM of a − EM of b, the same relative to b, the pooled std of both)."""
    by = {x["method"]: x for x in rows}
    d = by[a]["exact_match"] - by[b]["exact_match"]
    sd = math.sqrt((by[a]["exact_match_std"] ** 2 + by[b]["exact_match_std"] ** 2) / 2)
    return d, d / max(by[b]["exact_match"], 1e-9), sd


def measured_claims(rows: list[dict], notebook: str = "06") -> dict[str, dict]:
    """Verdicts for C5 (small-model side), C12 (whole training), C14, C15, C18 from summary rows at r=8."""
    by = {x["method"]: x for x in rows}
    lacking = [m for m in ("lora", "qlora", "dora") if m not in by]
    if lacking:  # an unfinished measurement: say so instead of guessing
        return {c: dict(verdict="pending", number=f"showdown has no {', '.join(lacking)} run yet", notebook=notebook)
                for c in ("C5", "C12", "C14", "C15", "C18")}
    lo, do, ql = by["lora"], by["dora"], by["qlora"]
    mem = {m: by[m]["peak_cuda"] or by[m]["mem_counted"] for m in by}
    d, rel, sd = _gap(rows, "dora", "lora")
    extra = do["trainable"] - lo["trainable"]
    c14 = ("holds" if sd < d and 0.05 <= rel <= 0.15 and extra == 0 else
           "holds with a nuance" if d > sd else "does not hold")
    stars = star_verdicts(rows)
    held = [v for v in stars if v["verdict"] != "reference"]
    n_ok = sum(v["verdict"] == "holds" for v in held)
    dq, _, sdq = _gap(rows, "qlora", "lora")
    c18 = ("holds with a nuance" if abs(dq) <= max(sdq, 0.01) and mem["qlora"] < mem["lora"] else
           "does not hold" if dq < -max(sdq, 0.01) else "holds with a nuance")
    share = 100 * lo["trainable"] / lo["total"]
    return {
        "C5": dict(verdict="holds with a nuance", notebook=f"01, {notebook}",
                   number=f"LLaMA-2-7B q,v r=8: 0.06% (nb 01); here LoRA r={lo['r']} on all linears of the 135M model: "
                          f"{lo['trainable']:,} = {share:.2f}% — the share shrinks with width"),
        "C12": dict(verdict="holds with a nuance", notebook=f"00, 05, {notebook}",
                    number="estimate QLoRA/LoRA 0.49 at 7B, 0.33 at 65B (nb 05); measured whole training "
                           f"peak (counted) QLoRA {mem['qlora'] / 2**20:.0f} MiB = "
                           f"{mem['qlora'] / mem['lora']:.2f}× LoRA's {mem['lora'] / 2**20:.0f} MiB on the 135M model "
                           "(activations and 16-bit embeddings do not shrink)"),
        "C14": dict(verdict=c14, notebook=f"03, {notebook}",
                    number=f"EM DoRA {do['exact_match']:.2f} ± {do['exact_match_std']:.2f} vs LoRA "
                           f"{lo['exact_match']:.2f} ± {lo['exact_match_std']:.2f} ({rel:+.0%}, seeds' spread "
                           f"{sd:.2f}); DoRA trains {extra:,} more params and takes "
                           f"{do['median_step_s'] / lo['median_step_s']:.2f}× LoRA's step time"),
        "C15": dict(verdict="holds" if n_ok == len(held) else "holds with a nuance" if n_ok else "does not hold",
                    notebook=notebook, number=f"{n_ok} of {len(held)} measurable star cells hold (memory, "
                                              "performance, speed; GPU need → VRAM planner)"),
        "C18": dict(verdict=c18, notebook=notebook,
                    number=f"QLoRA EM {ql['exact_match']:.2f} vs LoRA {lo['exact_match']:.2f} ({dq:+.2f}) at "
                           f"{mem['qlora'] / mem['lora']:.2f}× the memory and "
                           f"{ql['median_step_s'] / lo['median_step_s']:.2f}× the step time"),
    }


# Claims decided in other notebooks: (verdict, deciding number, notebook). "pending" where the
# notebook has not landed; update this table when it does (README repeats it).
LEDGER = {
    "C1": ("holds", "estimate 56 GB with checkpointing, 68 GB without (7B, bf16, AdamW, 4×512)", "05"),
    "C2": ("holds with a nuance", "7B at 1×512 on a 16 GB card: QLoRA 5.9 GB and QDoRA 6.0 GB fit; "
           "LoRA 14.7 GB and DoRA 14.7 GB do not with allocator headroom", "05"),
    "C3": ("holds with a nuance", "B is (out×r), A is (r×in), update scaled by α/r; ours = PEFT on outputs "
           "and gradients", "01"),
    "C4": ("holds", "PEFT prints 4,194,304 = 32·2·(4096·8 + 8·4096) trainable, 0.06%", "01"),
    "C6": ("holds", "merged FLOPs = base FLOPs exactly (FlopCounterMode); latency ratio measured", "01"),
    "C7": ("holds", "two adapters on one base switched by name, base weights unchanged (nb 01); nb 04 repeats "
           "it with an orders and a SQL adapter on one 4-bit base (scores printed there)", "01, 04"),
    "C8": ("holds", "LoRA keeps the whole 16-bit base: 13B's weights alone exceed 24 GB, 65B's exceed 80 GB "
           "(nb 05); the 4-bit base of the 135M model is ~40% of bf16 (nb 00)", "00, 05"),
    "C9": ("holds with a nuance", "double quant 0.5 → 0.127 bit/param (computed and measured); NF4 vs FP4 vs Int4 "
           "perplexity printed in nb 02 (best of three at most, not 'optimal': heavier tails, Q4_1 origin); "
           "paging needs a CUDA GPU", "02"),
    "C10": ("holds with a nuance", "full FT cells within ±20% of the estimate (7B 56, 13B 107, 65B 527 GB); "
            "the six LoRA/QLoRA cells ask for ~1.3–2× more than needed (7B LoRA 15.8, QLoRA 7.7 GB)", "05"),
    "C11": ("holds", "13B QLoRA at 1×2048 with checkpointing: 12.2 GB, fits 24 GB", "05"),
    "C13": ("holds with a nuance", "the update inside is s·BA; one norm per output row, detached "
            "in backward (§4.3); ours = PEFT use_dora", "03"),
    "C16": ("does not hold", "at the cpu budget (320 examples seen) the seed's recipe reaches 0% exact match, "
            "the kit's (all linears, lr 1e-3, batch 8x1) 100%; base 0% (make bench-qlora; nb 04 prints its own "
            "run). lr 2e-4 on the attention projections needs a far longer run", "04"),
    "C17": ("holds with a nuance", "13B QLoRA at 1×2048: 12.2 GB with checkpointing, 35.2 GB without (nb 05); "
            "checkpointing costs step time, so the cpu profile (RAM to spare) turns it off (nb 04)", "04, 05"),
}


def ledger(rows: list[dict]) -> list[dict]:
    """Every seed claim C1–C18: id, claim, verdict, deciding number, notebook (measured ones from rows)."""
    got = measured_claims(rows)
    out = []
    for i in range(1, 19):
        cid = f"C{i}"
        v = got.get(cid) or dict(zip(("verdict", "number", "notebook"), LEDGER[cid]))
        out.append(dict(id=cid, claim=CLAIMS[cid], **v))
    return out
