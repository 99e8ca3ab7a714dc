"""Run profiles: one switch, read once, that scales every lesson.

    PEFTLAB_PROFILE ∈ {smoke, cpu, gpu}; default: gpu when CUDA is present, else cpu.

`smoke` is for tests and CI (few steps, still the real model and the real
4-bit path), `cpu` shows every effect on a laptop in minutes, `gpu` uses a
bigger model and data. Notebooks run the same cells in every profile and pick
sizes with `profile.pick(smoke=..., cpu=..., gpu=...)` instead of branching.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_SEED = 1234


@dataclass(frozen=True)
class Profile:
    name: str            # one of PROFILES
    device: str          # "cuda" or "cpu": where models and tensors go
    model: str           # "embedded" (SmolLM2-135M-Instruct, offline) or a hub id / local path
    compute_dtype: str   # dtype for 4-bit matmuls and training: bf16, fp16 (T4) or fp32
    paged_optim: bool    # paged 8-bit AdamW (needs CUDA; CPU has nothing to page)
    seed: int            # the seed every notebook sets in its first cell

    def pick(self, *, smoke: Any, cpu: Any, gpu: Any) -> Any:
        """Return the value for this profile: `steps = profile.pick(smoke=2, cpu=80, gpu=400)`."""
        return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[self.name]

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.compute_dtype]


def cuda_compute_dtype() -> str:
    """bf16 where the GPU supports it (Ampere and newer), else fp16 (T4, V100)."""
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _cpu_compute_dtype() -> str:
    # bf16 is ~1.6x faster than fp32 on CPUs with AVX512-BF16/AMX (measured in
    # ../shared/FINDINGS.md); elsewhere bf16 matmuls are emulated and slow.
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def resolve(name: str | None = None, model: str | None = None) -> Profile:
    """Build the profile `name` (default: $PEFTLAB_PROFILE, else gpu/cpu by hardware).

    Raises ValueError for an unknown name, listing the valid ones.
    """
    raw = name if name is not None else os.environ.get("PEFTLAB_PROFILE", "")
    raw = raw.strip().lower()
    has_cuda = torch.cuda.is_available()
    if not raw:
        raw = "gpu" if has_cuda else "cpu"
    if raw not in PROFILES:
        raise ValueError(
            f"unknown profile {raw!r}: PEFTLAB_PROFILE must be one of {', '.join(PROFILES)} "
            "(or unset it to pick gpu/cpu by hardware)"
        )
    if raw == "gpu" and not has_cuda:
        device, dtype = "cpu", _cpu_compute_dtype()
    else:
        device = "cuda" if has_cuda else "cpu"
        dtype = cuda_compute_dtype() if has_cuda else _cpu_compute_dtype()
    chosen_model = model or os.environ.get("PEFTLAB_MODEL", "").strip() or "embedded"
    return Profile(name=raw, device=device, model=chosen_model, compute_dtype=dtype,
                   paged_optim=has_cuda, seed=DEFAULT_SEED)


@lru_cache(maxsize=1)
def profile() -> Profile:
    """The session's profile, read once from the environment."""
    return resolve()


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so reruns print the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
