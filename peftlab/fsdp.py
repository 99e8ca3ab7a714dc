"""FSDP2 run for real on this machine: shard the LoRA model over the ranks, take one AdamW step,
count what each rank holds.

    per rank ≈ (parameters + gradients + optimizer states) / world size      (ZeRO-3 / FSDP)

`torch.distributed.fsdp.fully_shard` (FSDP2; Zhao et al. 2023, arXiv:2304.11277) wraps every
decoder block and then the whole model; each parameter becomes a DTensor whose local shard is a
1/N slice of dim 0 (padded to equal sizes). The bytes are counted with `peftlab.memory` on the
local shards. Launch with torchrun (gloo on CPU); one plain process is the baseline:

    torchrun --nproc_per_node 2 -m peftlab.fsdp --out runs/07/fsdp2       (rank0.json, rank1.json)
    python -m peftlab.fsdp --out runs/07/fsdp1                              (rank0.json, unsharded)
    --variants dense,4bit,4bit-uint8   the dense LoRA model; the 4-bit base with its codes stored in
        the compute dtype (`bnb_4bit_quant_storage`, what FSDP-QLoRA needs); and stored as uint8
        (bitsandbytes' default). A variant whose step fails records its one-line error.

Public API: measure(cfg, *, quant=False, storage=None, seq_len=64) -> dict;  VARIANTS;  main(argv=None) -> int
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from . import data, memory, models, recipe, train


def _local(t):
    """A DTensor's local shard (its padded storage is what the rank holds); other tensors as they are."""
    return t.to_local() if hasattr(t, "to_local") else t


def _quant_model(cfg: recipe.TrainConfig, storage: torch.dtype):
    """The 4-bit base with its packed codes stored as `storage` (FSDP-QLoRA: the compute dtype),
    wrapped with LoRA (no k-bit upcast: FSDP wants one float dtype for everything it shards)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    models.import_bitsandbytes()
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                           bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=cfg.dtype,
                           bnb_4bit_quant_storage=storage)
    hf_logging.disable_progress_bar()
    base = AutoModelForCausalLM.from_pretrained(models.resolve_source(cfg.model), quantization_config=q,
                                                dtype=cfg.dtype, device_map={"": "cpu"})
    models.guard_4bit(base)
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=list(cfg.target_modules))
    return get_peft_model(base, lcfg), models.load_tokenizer(cfg.model)


def measure(cfg: recipe.TrainConfig, *, quant: bool = False, storage: torch.dtype | None = None,
            seq_len: int = 64) -> dict:
    """One forward/backward/AdamW step of `cfg`'s LoRA model, sharded with FSDP2 when this process is
    one of several (torchrun); returns this rank's bytes of parameters, trainable parameters,
    gradients and optimizer states (local shards), or {"error": one line} where a step fails.
    Rank r trains on records [r·b, (r+1)·b) of the train split, so rank 0 sees what one process sees:
    its loss must equal the unsharded loss (FSDP changes where bytes live, not the maths).
    quant: 4-bit base with codes stored as `storage` (default: the compute dtype)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    storage = storage or cfg.dtype
    out: dict = {"rank": rank, "world_size": world, "quant": quant,
                 "storage": str(storage).removeprefix("torch.") if quant else None}
    try:
        torch.manual_seed(cfg.seed)
        model, tok = _quant_model(cfg, storage) if quant else train.build_model(replace(cfg, method="lora", dropout=0.0))
        if world > 1:
            from torch.distributed.fsdp import fully_shard

            for block in model.get_base_model().model.layers:   # one FSDP unit per decoder block
                fully_shard(block)
            fully_shard(model)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        b = cfg.batch_size
        mine = list(data.load_split(cfg.task, "train"))[rank * b:(rank + 1) * b]  # this rank's share
        batch = data.Collator(tok.pad_token_id)([data.encode(tok, r, seq_len) for r in mine])
        model.train()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
    except Exception as err:  # noqa: BLE001 - the point is to show what fails, in one line
        out["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        return out
    params = list(model.parameters())
    out.update(
        loss=float(loss.detach()),
        params=memory.storage_bytes(_local(p) for p in params),
        trainable=memory.storage_bytes(_local(p) for p in params if p.requires_grad),
        grads=memory.storage_bytes(_local(p.grad) for p in params if p.grad is not None),
        optimizer=memory.storage_bytes(_local(v) for st in opt.state.values() for v in st.values()
                                       if isinstance(v, torch.Tensor) and v.dim() > 0),
        numel=sum(p.numel() for p in params))  # a DTensor reports the full (global) numel
    return out


VARIANTS = {"dense": dict(quant=False), "4bit": dict(quant=True), "4bit-uint8": dict(quant=True, storage=torch.uint8)}


def main(argv: list[str] | None = None) -> int:
    """Measure each variant on this rank and write `rank<N>.json` ({variant: measure(...)})."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m peftlab.fsdp")
    p.add_argument("--out", required=True, help="folder for rank<N>.json")
    p.add_argument("--variants", default="dense,4bit", help=f"comma-separated: {', '.join(VARIANTS)} (4bit: "
                   "codes stored in the compute dtype, as FSDP-QLoRA needs; 4bit-uint8: bitsandbytes' default)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--batch", type=int, default=2, help="sequences per process")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        p.error(f"unknown variant(s) {bad}: use {', '.join(VARIANTS)}")
    cfg = recipe.TrainConfig(method="lora", r=args.rank, alpha=2 * args.rank, target_modules=recipe.ALL_LINEAR,
                             batch_size=args.batch, compute_dtype="fp32", device="cpu")
    res = {v: measure(cfg, **VARIANTS[v]) for v in names}
    rank = next(iter(res.values()))["rank"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(res))
    if rank == 0:
        for v, r in res.items():
            print(f"{v}: world size {r['world_size']}: " + (r.get("error") or f"loss {r['loss']:.4f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
