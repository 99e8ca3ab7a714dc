"""Measure what `vram.estimate` predicts, on a real transformers + PEFT model, term by term.

    CPU:  weights, adapters, gradients, optimizer states = bytes of the real tensors (exact);
          activations = unique storages saved for backward (torch.autograd.graph.saved_tensors_hooks)
    CUDA: the same, plus torch.cuda.max_memory_allocated() over one full step (the peak)

The model is built the way a learner builds it: `models.load_model` (dense or NF4),
`prepare_model_for_kbit_training` for 4-bit, `get_peft_model(LoraConfig(...))`. The text is
random token ids of the chosen length: memory depends on shapes, not on words.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from .. import memory, models
from .. import settings as settings_mod
from .spec import GB, Settings, from_config, resolve
from .terms import estimate

_BASES: dict = {}   # (name, bits, dtype, double_quant) -> loaded base model, reused across grid points


def _base(name, bits, dtype, double_quant, device):
    key = (name, bits, dtype, double_quant, device)
    if key not in _BASES:
        _BASES.clear()  # keep one base in memory at a time
        td = settings_mod.torch_dtype(dtype)
        model = models.load_model(name, bits=bits, dtype=td, compute_dtype=td, double_quant=double_quant,
                                  device=device)
        if bits == 4:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _BASES[key] = model
    return _BASES[key]


def _optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    bnb = models.import_bitsandbytes()
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
    return cls(params, lr=1e-4)


def measure(name: str | None = None, settings: Settings | None = None, **kw) -> dict:
    """One real training step with `settings` on `settings.device` (cpu or cuda); returns the
    measured breakdown in bytes (+ "peak_allocated" on CUDA)."""
    s = replace(settings or Settings(device="cpu"), **kw)
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA GPU here: measure with device='cpu' (saved-tensor accounting)")
    arch = resolve(name or "embedded") if name in (None, "embedded") else from_config(
        models.resolve_source(name))
    s = estimate(arch, s).settings            # validated, targets normalized
    quant = s.method in ("qlora", "qdora")
    key = (name, 4 if quant else None, s.dtype, s.double_quant, s.device)
    base = _base(*key)
    device = next(base.parameters()).device
    base.set_attn_implementation(s.attn)
    if s.method == "full":
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=s.rank, lora_alpha=2 * s.rank, target_modules=list(s.targets),
                         lora_dropout=s.lora_dropout, use_dora="dora" in s.method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(base, cfg)
        models.guard_4bit(model)
    if s.grad_ckpt:
        models.set_checkpointing(model, True)      # transformers ≥5 may already hook the embeddings itself
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        if not getattr(inner, "_require_grads_hooks", None):
            model.enable_input_require_grads()
    model.train()
    try:
        return _step(model, s, device)
    finally:
        if s.grad_ckpt:                  # leave the base as found: no checkpointing, and the
            models.set_checkpointing(model, False)  # embedding hook that makes inputs need grad removed
            model.disable_input_require_grads()
        if s.method == "full":
            for p in base.parameters():
                p.requires_grad_(False)
        else:
            _BASES[key] = model.unload()


def _step(model, s: Settings, device) -> dict:
    """One forward + backward + optimizer step; every term counted by peftlab.memory."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (s.batch, s.seq_len), generator=gen).to(device)
    opt = _optimizer(s.optimizer, trainable)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with memory.SavedTensorMeter(exclude=model) as saved:  # held for backward when it starts
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
    out = {"weights": memory.footprint_bytes(model) - memory.storage_bytes(trainable),
           "trainable params": memory.storage_bytes(trainable),
           "gradients": memory.storage_bytes(p.grad for p in trainable),
           "optimizer": memory.optimizer_bytes(opt), "activations": saved.bytes}
    if cuda:
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
    opt.zero_grad(set_to_none=True)
    del opt
    return out


def compare(settings: Settings, name: str | None = None) -> dict:
    """Predicted and measured (on CPU, where every saved byte is deterministic) side by side."""
    s = replace(settings, device="cpu", stack="hf")
    meas = measure(name, s)
    est = estimate(name or "embedded", s)
    row = {f"pred {k}": est.breakdown[k] for k in meas if k in est.breakdown}
    row.update({f"meas {k}": v for k, v in meas.items()})
    row["activation error"] = est.breakdown["activations"] / meas["activations"] - 1
    return row


# Published peaks that calibrate the estimator (docs/findings.md): Lit-GPT resource tables, A100,
# bf16-true, LoRA r=8 α=16 on q,v, dropout 0.05, AdamW (PagedAdamW when 4-bit), no checkpointing,
# first step on the longest sample; metric torch.cuda.max_memory_allocated()/1e9.
LITGPT_PEAKS = [  # (model, quant, micro-batch, longest sample, peak GB)
    ("phi-1.5", "none", 1, 1044, 4.82), ("phi-1.5", "none", 2, 1044, 6.76),
    ("phi-1.5", "none", 4, 1044, 10.68), ("phi-1.5", "nf4", 1, 1044, 3.78),
    ("phi-1.5", "nf4+dq", 1, 1044, 3.72),
    ("stablelm-alpha-3b", "none", 1, 1034, 9.69), ("stablelm-alpha-3b", "none", 2, 1034, 12.10),
    ("stablelm-alpha-3b", "none", 4, 1034, 16.92), ("stablelm-alpha-3b", "nf4", 1, 1034, 6.35),
    ("stablelm-alpha-3b", "nf4+dq", 1, 1034, 6.19),
    ("llama-2-7b", "none", 1, 1304, 21.30), ("llama-2-7b", "none", 2, 1304, 29.07),
    ("llama-2-7b", "nf4", 1, 1304, 14.14), ("llama-2-7b", "nf4+dq", 1, 1304, 13.84),
]


def litgpt_settings(quant: str, batch: int, seq_len: int) -> Settings:
    """The settings of one Lit-GPT row, spelled in the estimator's terms (the same for every row)."""
    return Settings(method="lora" if quant == "none" else "qlora", rank=8, targets=("q_proj", "v_proj"),
                         seq_len=seq_len, batch=batch, dtype="bf16", double_quant=quant == "nf4+dq",
                         lora_dropout=0.05, optimizer="adamw" if quant == "none" else "paged_adamw_32bit",
                         device="cuda", stack="litgpt")


def calibration() -> list[dict]:
    """Every published row with the prediction (peak allocated, GB) and the relative error."""
    rows = []
    for model, quant, batch, seq, peak in LITGPT_PEAKS:
        pred = estimate(model, litgpt_settings(quant, batch, seq)).peak_allocated / GB
        rows.append({"model": model, "quant": quant, "batch": batch, "seq_len": seq,
                     "measured GB": peak, "predicted GB": round(pred, 2), "error": pred / peak - 1})
    return rows


def cuda_check(seq_len: int = 512, batch: int = 2) -> str:
    """On a CUDA GPU: predicted peak vs torch.cuda.max_memory_allocated() for a bf16 LoRA step."""
    if not torch.cuda.is_available():
        return "no CUDA GPU here: the max_memory_allocated comparison runs in the gpu profile"
    s = Settings(method="lora", dtype="bf16", seq_len=seq_len, batch=batch, device="cuda")
    meas = measure(None, s)["peak_allocated"]
    pred = estimate("embedded", s).peak_allocated
    return (f"bf16 LoRA {batch}×{seq_len}: predicted peak {pred / 1e6:.0f} MB, "
            f"max_memory_allocated {meas / 1e6:.0f} MB ({100 * (pred / meas - 1):+.1f}%)")
