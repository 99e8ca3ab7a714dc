"""`peftlab estimate`: the VRAM estimator on the command line (human table or one JSON object).

    peftlab estimate --model llama-2-7b --method qlora --rank 8 --targets q_proj,v_proj \\
                     --seq-len 1304 --batch 1 [--grad-ckpt] [--json]
    peftlab estimate --model llama-2-70b --method qlora --gpus 2 --strategy fsdp [--cpu-offload]
    peftlab estimate --config path/to/config.json ...     (or --model path/to/config.json)

`add_estimate_parser(subparsers)` registers the subcommand; `peftlab/cli.py` calls it.
Sizes are checked by `estimate`, which raises ValueError; cli.main prints it as one
line with exit code 2. argparse's own errors (a bad choice, `--rank 8.5`) are one line with
exit code 2 too: no usage block, the fix and a pointer to --help.
"""
from __future__ import annotations

import argparse
import json

from .sharding import STRATEGIES, shard
from .spec import DTYPES, METHODS, OPTIMIZERS, PRESETS, STACKS, from_config, report
from .terms import estimate


def add_estimate_parser(subparsers) -> argparse.ArgumentParser:
    """Register `estimate` on an argparse subparsers object; its func(args) returns an exit code."""
    p = subparsers.add_parser("estimate", help="predict the peak GPU memory of a fine-tuning step",
                              description="Predict peak GPU memory of one fine-tuning step.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"a preset ({', '.join(PRESETS)}) or a path to a config.json")
    which.add_argument("--config", help="a Hugging Face config.json (or the folder holding it)")
    p.add_argument("--method", default="lora", choices=METHODS)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (ignored for full)")
    p.add_argument("--targets", default="q_proj,v_proj",
                   help="comma-separated linear names, lm_head and all-linear allowed (ignored for full)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=True,
                   help="NF4 double quantization (4-bit methods)")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--stack", default="hf", choices=tuple(STACKS),
                   help="hf = transformers+PEFT (this kit); litgpt = Lit-GPT 2023 (calibration)")
    p.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs; the figures are per GPU "
                   "(--batch is each GPU's micro-batch)")
    p.add_argument("--strategy", default="ddp", choices=STRATEGIES,
                   help="ddp = every GPU holds everything; fsdp = weights, grads, optimizer sharded (ZeRO-3)")
    p.add_argument("--cpu-offload", action="store_true", help="fsdp: keep the sharded states in CPU RAM")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_estimate)

    def one_line_error(message: str) -> None:     # argparse prints usage + error; a learner needs one line
        p.exit(2, f"{p.prog}: error: {message}; see `{p.prog} --help`\n")
    p.error = one_line_error
    return p


def run_estimate(args: argparse.Namespace) -> int:
    if args.model is None and args.config is None:
        raise ValueError("which model? give --model NAME (a preset, e.g. llama-2-7b) or "
                         "--config PATH (a config.json)")
    est = estimate(args.model if args.config is None else from_config(args.config), method=args.method, rank=args.rank, targets=args.targets,
                   seq_len=args.seq_len, batch=args.batch, grad_ckpt=args.grad_ckpt,
                   optimizer=args.optimizer, dtype=args.dtype, double_quant=args.double_quant,
                   attn=args.attn, lora_dropout=args.lora_dropout, stack=args.stack)
    est = shard(est, args.gpus, args.strategy, args.cpu_offload)
    if args.json:
        out = est.to_json()
        out["settings"].update(gpus=args.gpus, strategy=args.strategy, cpu_offload=args.cpu_offload)
        out["cpu_ram_bytes"] = est.detail["cpu_ram"]
        print(json.dumps(out))
        return 0
    if args.gpus > 1 or args.strategy != "ddp":
        off = f", CPU offload ({est.detail['cpu_ram'] / 1e9:.1f} GB of CPU RAM per GPU)" if args.cpu_offload else ""
        print(f"per GPU, {args.gpus} GPU(s) with {args.strategy.upper()}{off}; batch {args.batch} per GPU")
    print(report(est))
    return 0
