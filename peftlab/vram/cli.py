"""`peftlab estimate`: the VRAM estimator on the command line (human table or one JSON object).

    peftlab estimate --model llama-2-7b --method qlora --rank 8 --targets q_proj,v_proj \\
                     --seq-len 1304 --batch 1 [--grad-ckpt] [--json]

`add_estimate_parser(subparsers)` registers the subcommand; `peftlab/cli.py` calls it.
Sizes are checked by `vram.estimate`, which raises ValueError; cli.main prints it as one
line with exit code 2 (argparse's own usage errors also exit 2).
"""
from __future__ import annotations

import argparse
import json


def add_estimate_parser(subparsers) -> argparse.ArgumentParser:
    """Register `estimate` on an argparse subparsers object; its func(args) returns an exit code."""
    from . import vram

    p = subparsers.add_parser("estimate", help="predict the peak GPU memory of a fine-tuning step",
                              description="Predict peak GPU memory of one fine-tuning step.")
    p.add_argument("--model", required=True,
                   help=f"a preset ({', '.join(vram.PRESETS)}) or a path to a config.json")
    p.add_argument("--method", default="lora", choices=vram.METHODS)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (ignored for full)")
    p.add_argument("--targets", default="q_proj,v_proj",
                   help="comma-separated linear names, lm_head and all-linear allowed (ignored for full)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--optimizer", default="adamw", choices=vram.OPTIMIZERS)
    p.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=True,
                   help="NF4 double quantization (4-bit methods)")
    p.add_argument("--dtype", default="bf16", choices=tuple(vram.DTYPES))
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--stack", default="hf", choices=tuple(vram.STACKS),
                   help="hf = transformers+PEFT (this kit); litgpt = Lit-GPT 2023 (calibration)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_estimate)
    return p


def run_estimate(args: argparse.Namespace) -> int:
    from . import vram

    est = vram.estimate(args.model, method=args.method, rank=args.rank, targets=args.targets,
                        seq_len=args.seq_len, batch=args.batch, grad_ckpt=args.grad_ckpt,
                        optimizer=args.optimizer, dtype=args.dtype, double_quant=args.double_quant,
                        attn=args.attn, lora_dropout=args.lora_dropout, stack=args.stack)
    if args.json:
        print(json.dumps(est.to_json()))
        return 0
    print(report(est))
    return 0


def report(est) -> str:
    """The human-readable table: total in GB and GiB, then the breakdown."""
    from . import vram

    s = est.settings
    what = "all weights" if s.method == "full" else f"r={s.rank} on {','.join(s.targets)}"
    lines = [f"{est.arch.name}: {s.method} ({what}), {s.batch}×{s.seq_len} tokens, {s.dtype}, "
             f"{s.optimizer}{', grad-ckpt' if s.grad_ckpt else ''}",
             f"total: {est.total / vram.GB:.2f} GB = {est.total / vram.GiB:.2f} GiB "
             f"(peak allocated {est.peak_allocated / vram.GB:.2f} GB + CUDA context)"]
    for name, b in est.breakdown.items():
        lines.append(f"  {name:18s} {b / vram.GB:9.3f} GB {b / vram.GiB:9.3f} GiB")
    fits = [g for g, cap in GPUS if est.fits(cap)]
    lines.append("fits (with 15% allocator headroom): " + (", ".join(fits) if fits else "none of "
                 + ", ".join(g for g, _ in GPUS)))
    return "\n".join(lines)


GPUS = (("T4 16GB", 16), ("RTX 3090/4090 24GB", 24), ("A100 40GB", 40), ("A100 80GB", 80),
        ("H100 80GB", 80))
