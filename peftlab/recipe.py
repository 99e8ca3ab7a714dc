"""The fine-tuning recipe as one self-contained config: method, adapter, optimizer, data, hardware.

    LoRA   W' = W + (α/r)·B·A            (Hu et al. 2021, arXiv:2106.09685)
    QLoRA  W' = dequant_NF4(W) + (α/r)·B·A, base frozen in 4 bits (Dettmers et al. 2023, 2305.14314)
    DoRA   W' = m · (W + (α/r)·B·A) / ‖W + (α/r)·B·A‖_row   (Liu et al. 2024, arXiv:2402.09353)

A `TrainConfig` names everything a run depends on, including the model, the device and the
compute dtype, so `train.build_model(cfg)` and `train.train(cfg, ...)` read nothing global:
`recipe(profile)` and `seed_defaults(profile)` copy the profile's hardware choices into it once.
A bare `TrainConfig()` is the embedded model on the CPU in fp32.

Public API:
    METHODS = ("full", "lora", "qlora", "dora", "qdora"); ATTENTION, ALL_LINEAR (module-name tuples)
    TrainConfig(method="qlora", task="orders", model="embedded", device="cpu", compute_dtype="fp32",
                r=16, alpha=32, ...)                       frozen; see fields. Every field is checked
                                                           on creation: one ValueError line naming
                                                           each bad field and what it allows
    lora_targets(cfg) -> str | list[str]                   what LoraConfig(target_modules=) takes
    seed_defaults(profile=None, **overrides) -> TrainConfig  the seed article's recipe (claim C16)
    recipe(profile=None, **overrides) -> TrainConfig         this kit's per-profile recipe
    config_dict(cfg) -> dict                                 for tables and JSON reports
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import asdict, dataclass, replace

import torch

from . import data, settings

METHODS = settings.METHODS
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")
ALL_LINEAR_PEFT = "all-linear"  # PEFT's own spelling: every linear but the output head, named per model
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "qlora"                  # full | lora | qlora | dora | qdora (q = 4-bit base)
    task: str | None = "orders"            # a folder in data/ (data.TASKS); None: your own records
                                           # (train.train(..., train_records=...), exact match only)
    model: str = "embedded"                # "embedded" (SmolLM2-135M-Instruct), a local folder or a hub id
    device: str = "cpu"                    # where the model trains: cpu | cuda
    compute_dtype: str = "fp32"            # matmul / autocast dtype: bf16 | fp16 | fp32 (profile: by hardware)
    r: int = 16                            # adapter rank (seed: 16, range 8–64)
    alpha: float = 32                      # scaling α; the update is (α/r)·B·A (seed: α = 2r)
    dropout: float = 0.05                  # dropout on the adapter input, 0 ≤ p < 1 (seed: 0.05)
    target_modules: tuple[str, ...] = ATTENTION  # linears that get adapters (seed: attention); also
                                           # PEFT's "all-linear", a comma string "q_proj,v_proj" or a list
    lr: float = 2e-4                       # peak learning rate, 0 < lr < 1 (seed: 2e-4)
    batch_size: int = 4                    # sequences per micro-batch (seed: 4)
    grad_accum: int = 4                    # micro-batches per optimizer step (seed: 4 → 16 seqs)
    max_steps: int = 100                   # optimizer steps
    warmup_steps: int = 0                  # linear warm-up steps before the linear decay
    weight_decay: float = 0.0              # AdamW decoupled weight decay, 0 ≤ wd < 1
    seed: int = settings.DEFAULT_SEED      # adapter init, dropout and data order
    gradient_checkpointing: bool = True    # recompute activations in backward: less memory, slower
    optimizer: str = "adamw_torch"         # Trainer optim name (OptimizerNames); "paged_adamw_8bit" on CUDA
    quant_type: str = "nf4"                # 4-bit code for qlora/qdora: nf4 | fp4
    double_quant: bool = True              # quantize the absmax constants too (QLoRA §3)
    max_length: int = 256                  # longer examples lose the start of their prompt (data.tokenize)
    train_examples: int | None = None      # use only the first N training records (None: all)
    logging_steps: int = 1                 # log the loss every N optimizer steps
    save_steps: int = 0                    # checkpoint every N steps (0: no checkpoints)

    def __post_init__(self):
        targets, problem = _targets(self.target_modules)
        object.__setattr__(self, "target_modules", targets)
        problems = [problem] * bool(problem) + _problems(self)
        if problems:  # every bad field at once, one line, before anything is loaded
            raise ValueError("; ".join(problems))

    @property
    def quantized(self) -> bool:
        return self.method in ("qlora", "qdora")

    @property
    def dtype(self) -> torch.dtype:
        return settings.torch_dtype(self.compute_dtype)


def _targets(value) -> tuple[tuple[str, ...] | object, str | None]:
    """PEFT's spellings → (a tuple of module names, None): "all-linear" → ("all-linear",) (PEFT expands
    it per model), "q_proj,v_proj" → ("q_proj", "v_proj"), a list or tuple → a tuple without
    duplicates. Anything else → (value, what is wrong)."""
    if isinstance(value, str):
        value = [n.strip() for n in value.split(",")] if value.strip() else []
    if not isinstance(value, (list, tuple)):
        return value, (f"target_modules must be {ALL_LINEAR_PEFT!r}, a comma string like 'q_proj,v_proj' "
                       f"or a list of module names, got {value!r}")
    if not value:
        return (), "target_modules is empty: name at least one linear, e.g. ATTENTION or 'all-linear'"
    bad = [n for n in value if not isinstance(n, str) or not n.strip() or any(c.isspace() for c in n.strip())]
    if bad:
        return tuple(value), f"target_modules must be module names like 'q_proj' (no blanks), got {bad[0]!r}"
    names = tuple(dict.fromkeys(n.strip() for n in value))
    if ALL_LINEAR_PEFT in names and len(names) > 1:
        return names, f"target_modules: {ALL_LINEAR_PEFT!r} already means every linear layer; give it alone"
    return names, None


@functools.lru_cache(maxsize=1)
def _optimizers() -> tuple[str, ...]:
    from transformers.training_args import OptimizerNames  # the names Trainer accepts, not a copy

    return tuple(o.value for o in OptimizerNames)


def _problems(c: TrainConfig) -> list[str]:
    """Every field checked against what a run can use; each problem names the field and the allowed values."""
    out = []
    choices = dict(method=METHODS, device=DEVICES, compute_dtype=tuple(settings.DTYPES), quant_type=("nf4", "fp4"))
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            hint = " (recipe(profile) picks the profile's)" if name == "compute_dtype" else ""
            out.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(c, name)!r}{hint}")
    if c.task is not None and c.task not in data.TASKS:
        out.append(f"task must be one of {', '.join(data.TASKS)}, or None to train on your own records "
                   f"(train.train(..., train_records=...)), got {c.task!r}")
    if not isinstance(c.model, str) or not c.model.strip():
        out.append(f"model is empty: use 'embedded', a local folder or a hub id (got {c.model!r})")
    for name, low in dict(r=1, batch_size=1, grad_accum=1, max_steps=1, max_length=1, warmup_steps=0, seed=0,
                          logging_steps=1, save_steps=0, train_examples=1).items():
        v = getattr(c, name)
        if (v is None and name == "train_examples") or (_whole(v) and v >= low):
            continue
        none = " or None (all)" if name == "train_examples" else ""
        off = " (0: none)" if low == 0 and name == "save_steps" else ""
        out.append(f"{name} must be a whole number ≥ {low}{off}{none}, got {v!r}")
    for name, lo, hi, lo_ok, example in (("lr", 0, 1, False, "2e-4 (seed) or 1e-3 (CPU recipe), as 0 trains nothing"),
                                          ("alpha", 0, float("inf"), False, "2·r (32 for r=16)"),
                                          ("dropout", 0, 1, True, "0.05 (seed) or 0.0"),
                                          ("weight_decay", 0, 1, True, "0.0 or 0.01")):
        v = getattr(c, name)
        if not (_number(v) and (v >= lo if lo_ok else v > lo) and v < hi):
            span = f"{'≥' if lo_ok else '>'} {lo}" + (f" and < {hi}" if hi != float("inf") else "")
            out.append(f"{name} must be a number {span}, e.g. {example}, got {v!r}")
    for name in ("gradient_checkpointing", "double_quant"):
        if not isinstance(getattr(c, name), bool):
            out.append(f"{name} must be True or False, got {getattr(c, name)!r}")
    if not isinstance(c.optimizer, str) or c.optimizer not in _optimizers():
        out.append(f"optimizer must be a name transformers' Trainer accepts, e.g. adamw_torch, sgd, adafactor, "
                   f"paged_adamw_8bit (all: transformers.training_args.OptimizerNames), got {c.optimizer!r}")
    if not out and c.save_steps > c.max_steps:
        out.append(f"save_steps={c.save_steps} > max_steps={c.max_steps}: no checkpoint would be written; "
                   "use save_steps ≤ max_steps, or 0 for none")
    if not out and c.logging_steps > c.max_steps:
        out.append(f"logging_steps={c.logging_steps} > max_steps={c.max_steps}: no loss would be logged; "
                   "use logging_steps ≤ max_steps")
    return out


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _hardware(p: settings.Profile) -> dict:
    """What a profile decides about the machine: model, device, compute dtype."""
    return dict(model=p.model, device=p.device, compute_dtype=p.compute_dtype)


def seed_defaults(profile: settings.Profile | None = None, **overrides) -> TrainConfig:
    """The seed article's starting recipe (C16): r=16, α=32, dropout 0.05, attention, lr 2e-4, 4×4,
    on the profile's model, device and compute dtype (default: the session's profile)."""
    p = profile or settings.profile()
    return replace(TrainConfig(), **{**_hardware(p), **overrides})


def recipe(profile: settings.Profile | None = None, **overrides) -> TrainConfig:
    """This kit's recipe per profile (default: the session's); differences from `seed_defaults()`
    are on purpose and measured (notebook 04, benchmarks/bench_qlora.py): for a short CPU run,
    adapters on all linears, lr 1e-3, batch 4 × 1 and no checkpointing reach ≥ 90% held-out exact
    match on `orders` in 40 steps (notebook 04, results/bench_qlora_cpu.json). Batch 4 × 40 steps
    (160 examples) scored as well as batch 8 × 30 (240) in a third less time: with this lr the number
    of steps matters more than the examples per step (batch 4 × 30: 92.5%, too close to 90%). r, α and
    dropout stay the seed's.
    The profile's model, device and compute dtype are copied in. Overrides win."""
    p = profile or settings.profile()
    base = p.pick(
        smoke=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=2, grad_accum=1, max_steps=3,
                   gradient_checkpointing=False),
        cpu=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=4, grad_accum=1, max_steps=40,
                 warmup_steps=5, gradient_checkpointing=False),
        gpu=dict(target_modules=ALL_LINEAR, lr=2e-4, batch_size=4, grad_accum=4, max_steps=200,
                 warmup_steps=10, gradient_checkpointing=True,
                 optimizer="paged_adamw_8bit" if p.paged_optim else "adamw_torch"),
    )
    return replace(TrainConfig(seed=p.seed), **{**_hardware(p), **base, **overrides})


def lora_targets(cfg: TrainConfig) -> str | list[str]:
    """cfg.target_modules as PEFT's LoraConfig takes it: "all-linear" as that string, else a list."""
    return ALL_LINEAR_PEFT if cfg.target_modules == (ALL_LINEAR_PEFT,) else list(cfg.target_modules)


def config_dict(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for tables and JSON reports)."""
    d = asdict(cfg)
    d["target_modules"] = ",".join(cfg.target_modules)
    return d
