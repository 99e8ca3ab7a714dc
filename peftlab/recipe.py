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
                r=16, alpha=32, ...)                       frozen; see fields
    seed_defaults(profile=None, **overrides) -> TrainConfig  the seed article's recipe (claim C16)
    recipe(profile=None, **overrides) -> TrainConfig         this kit's per-profile recipe
    config_dict(cfg) -> dict                                 for tables and JSON reports
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from . import data, settings

METHODS = settings.METHODS
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "qlora"                  # full | lora | qlora | dora | qdora (q = 4-bit base)
    task: str = "orders"                   # a folder in data/ (peftlab.data.TASKS)
    model: str = "embedded"                # "embedded" (SmolLM2-135M-Instruct), a local folder or a hub id
    device: str = "cpu"                    # where the model trains: cpu | cuda
    compute_dtype: str = "fp32"            # matmul / autocast dtype: bf16 | fp16 | fp32 (profile: by hardware)
    r: int = 16                            # adapter rank (seed: 16, range 8–64)
    alpha: int = 32                        # scaling α; the update is (α/r)·B·A (seed: α = 2r)
    dropout: float = 0.05                  # dropout on the adapter input (seed: 0.05)
    target_modules: tuple[str, ...] = ATTENTION  # linears that get adapters (seed: attention)
    lr: float = 2e-4                       # peak learning rate (seed: 2e-4)
    batch_size: int = 4                    # sequences per micro-batch (seed: 4)
    grad_accum: int = 4                    # micro-batches per optimizer step (seed: 4 → 16 seqs)
    max_steps: int = 100                   # optimizer steps
    warmup_steps: int = 0                  # linear warm-up steps before the linear decay
    weight_decay: float = 0.0              # AdamW decoupled weight decay
    seed: int = settings.DEFAULT_SEED      # adapter init, dropout and data order
    gradient_checkpointing: bool = True    # recompute activations in backward: less memory, slower
    optimizer: str = "adamw_torch"         # Trainer optim name; "paged_adamw_8bit" on CUDA
    quant_type: str = "nf4"                # 4-bit code for qlora/qdora: nf4 | fp4
    double_quant: bool = True              # quantize the absmax constants too (QLoRA §3)
    max_length: int = 256                  # truncate longer examples (ours are < 100 tokens)
    train_examples: int | None = None      # use only the first N training records (None: all)
    logging_steps: int = 1                 # log the loss every N optimizer steps
    save_steps: int = 0                    # checkpoint every N steps (0: no checkpoints)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.task not in data.TASKS:
            raise ValueError(f"task must be one of {', '.join(data.TASKS)}, got {self.task!r}")
        if self.compute_dtype not in settings.DTYPES:
            raise ValueError(f"compute_dtype must be one of {', '.join(settings.DTYPES)}, got "
                             f"{self.compute_dtype!r} (recipe(profile) picks the profile's)")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model is empty: use 'embedded', a local folder or a hub id")
        for name in ("r", "alpha", "batch_size", "grad_accum", "max_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name at least one linear, e.g. ATTENTION")

    @property
    def quantized(self) -> bool:
        return self.method in ("qlora", "qdora")

    @property
    def dtype(self) -> torch.dtype:
        return settings.torch_dtype(self.compute_dtype)


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
    adapters on all linears, lr 1e-3, batch 8 × 1 and no checkpointing reach ≥ 90% held-out exact
    match on `orders` in 40 steps (93% after 30 in development); r, α and dropout stay the seed's.
    The profile's model, device and compute dtype are copied in. Overrides win."""
    p = profile or settings.profile()
    base = p.pick(
        smoke=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=2, grad_accum=1, max_steps=3,
                   gradient_checkpointing=False),
        cpu=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=8, grad_accum=1, max_steps=40,
                 warmup_steps=5, gradient_checkpointing=False),
        gpu=dict(target_modules=ALL_LINEAR, lr=2e-4, batch_size=4, grad_accum=4, max_steps=200,
                 warmup_steps=10, gradient_checkpointing=True,
                 optimizer="paged_adamw_8bit" if p.paged_optim else "adamw_torch"),
    )
    return replace(TrainConfig(seed=p.seed), **{**_hardware(p), **base, **overrides})


def config_dict(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for tables and JSON reports)."""
    d = asdict(cfg)
    d["target_modules"] = ",".join(cfg.target_modules)
    return d
