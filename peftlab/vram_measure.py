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
import weakref
from dataclasses import replace

import torch

from . import models, vram

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_BASES: dict = {}   # (name, bits, dtype, double_quant) -> loaded base model, reused across grid points


def _base(name, bits, dtype, double_quant):
    key = (name, bits, dtype, double_quant)
    if key not in _BASES:
        _BASES.clear()  # keep one base in memory at a time
        td = _TORCH_DTYPES[dtype]
        model = models.load_model(name, bits=bits, dtype=td, compute_dtype=td, double_quant=double_quant,
                                  device="cuda" if torch.cuda.is_available() else "cpu")
        if bits == 4:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        _BASES[key] = model
    return _BASES[key]


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _optimizer(name: str, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-4)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-4)
    bnb = models.import_bitsandbytes()
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
           "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
    return cls(params, lr=1e-4)


def measure(name: str | None = None, settings: vram.Settings | None = None, **kw) -> dict:
    """One real training step with `settings`; returns the measured breakdown (bytes)."""
    s = replace(settings or vram.Settings(), **kw)
    arch = vram.resolve(name or "embedded") if name in (None, "embedded") else vram.from_config(
        models.resolve_source(name))
    s = vram.estimate(arch, s).settings            # validated, targets normalized
    quant = s.method in ("qlora", "qdora")
    base = _base(name, 4 if quant else None, s.dtype, s.double_quant)
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
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()
    try:
        return _step(model, s, device)
    finally:
        if s.grad_ckpt:
            model.gradient_checkpointing_disable()
        if s.method == "full":
            for p in base.parameters():
                p.requires_grad_(False)
        else:
            _BASES[(name, 4 if quant else None, s.dtype, s.double_quant)] = model.unload()


def _step(model, s: vram.Settings, device) -> dict:
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    refs: list = []                     # weak: a graph branch that dies before backward frees its tensors

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            refs.append(weakref.ref(t))
        return t

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (s.batch, s.seq_len), generator=gen).to(device)
    opt = _optimizer(s.optimizer, trainable)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        activations = _storage_bytes([t for t in (r() for r in refs) if t is not None])
        loss.backward()
        opt.step()
    grads = _storage_bytes([p.grad for p in trainable if p.grad is not None])
    states = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
    out = {"weights": models.footprint_bytes(model) - _storage_bytes(trainable),
           "trainable params": _storage_bytes(trainable), "gradients": grads,
           "optimizer": _storage_bytes(states), "activations": activations}
    if cuda:
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
    opt.zero_grad(set_to_none=True)
    del opt
    return out


def compare(settings: vram.Settings, name: str | None = None) -> dict:
    """Predicted and measured side by side, with the relative activation error."""
    meas = measure(name, replace(settings, device="cuda" if torch.cuda.is_available() else "cpu"))
    est = vram.estimate(name or "embedded", replace(settings, device="cpu", stack="hf"))
    row = {f"pred {k}": est.breakdown[k] for k in meas if k in est.breakdown}
    row.update({f"meas {k}": v for k, v in meas.items()})
    row["activation error"] = est.breakdown["activations"] / meas["activations"] - 1
    return row
