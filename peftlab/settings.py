"""Run profiles: one switch, read once, that scales every lesson.

    PEFTLAB_PROFILE ∈ {smoke, cpu, gpu}; default: gpu when CUDA is present, else cpu.
    downloads allowed ⇔ PEFTLAB_ALLOW_DOWNLOADS=1 (or, when that is unset, HF_HUB_OFFLINE=0); default off.

`smoke` is for tests and CI (few steps, still the real model and the real
4-bit path), `cpu` shows every effect on a laptop in minutes, `gpu` uses a
bigger model and data. Notebooks run the same cells in every profile and pick
sizes with `profile.pick(smoke=..., cpu=..., gpu=...)` instead of branching.

Downloads have one switch too, `downloads_allowed()`, which every entry point (the CLI,
`models.load_model` / `load_tokenizer` / `resolve_source`) honours: the kit fetches a hub model
only when you name one *and* allow downloads. The kit never sends telemetry: importing it sets
HF_HUB_DISABLE_TELEMETRY=1 unless you set it yourself.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
DEFAULT_SEED = 1234
ALLOW_DOWNLOADS = "PEFTLAB_ALLOW_DOWNLOADS=1"  # what to set to allow hub downloads (error messages quote it)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # before huggingface_hub reads it; the user's value wins

# One source for the kit's vocabulary (training, the VRAM estimator, widgets and the CLI all read these).
METHODS = ("full", "lora", "qlora", "dora", "qdora")  # q = frozen 4-bit base; dora = magnitude/direction
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # name -> torch dtype
DTYPE_BYTES = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}  # name -> bytes


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for "bf16" | "fp16" | "fp32"; a clear ValueError for anything else."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass(frozen=True)
class Profile:
    name: str            # one of PROFILES
    device: str          # "cuda" or "cpu": where models and tensors go
    model: str           # "embedded" (SmolLM2-135M-Instruct, offline) or a hub id / local path (gpu_model)
    compute_dtype: str   # dtype for 4-bit matmuls and training: bf16, fp16 (T4) or fp32
    paged_optim: bool    # paged 8-bit AdamW (needs CUDA; CPU has nothing to page)
    seed: int            # the seed every notebook sets in its first cell

    def pick(self, *, smoke: Any, cpu: Any, gpu: Any) -> Any:
        """Return the value for this profile: `steps = profile.pick(smoke=2, cpu=80, gpu=400)`."""
        return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[self.name]

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.compute_dtype)


def cuda_compute_dtype(capability: tuple[int, int] | None = None) -> str:
    """bf16 on compute capability ≥ 8.0 (Ampere and newer: A100, RTX 30xx/40xx, H100), else fp16
    (T4 = 7.5, V100 = 7.0). Decided by capability, not `torch.cuda.is_bf16_supported()`, which
    also returns True on a T4 because it counts emulated bf16 (slow, and not what the lesson means).
    `capability` defaults to the current GPU's."""
    cap = capability if capability is not None else torch.cuda.get_device_capability()
    return "bf16" if tuple(cap) >= (8, 0) else "fp16"


def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX flags in /proc/cpuinfo).

    Elsewhere torch emulates bf16 matmuls: ~100x slower than fp32 on an AVX2-only CPU (notebook 04)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_compute_dtype() -> str:
    # bf16 is ~1.6x faster than fp32 on CPUs with AVX512-BF16/AMX (measured on this kit's
    # CI machine, docs/findings.md); elsewhere bf16 matmuls are emulated and slow.
    return "bf16" if cpu_native_bf16() else "fp32"


def default_model() -> str:
    """The model when none is named: $PEFTLAB_MODEL (hub id or local folder), else "embedded"."""
    return os.environ.get("PEFTLAB_MODEL", "").strip() or "embedded"


# The gpu profile's model when PEFTLAB_MODEL is unset, by free GPU memory (largest first). Each must
# run every notebook: notebook 01 holds three fp32 copies (12 B/param) and the showdown's full
# fine-tune fp32 weights + grads + AdamW (16 B/param) plus activations. Both Apache-2.0.
GPU_MODELS = (  # (free GiB at least, hub id)
    (30, "Qwen/Qwen2.5-1.5B-Instruct"),   # A100 40/80 GB, L40S, H100
    (12, "Qwen/Qwen2.5-0.5B-Instruct"),   # T4 16 GB (Colab), A10, RTX 3090/4090
)


def gpu_model(free_bytes: int, downloads: bool) -> str:
    """The gpu profile's default model: the first GPU_MODELS entry that fits `free_bytes` of free
    GPU memory (`torch.cuda.mem_get_info()[0]`) when hub downloads are allowed, else "embedded"."""
    if isinstance(free_bytes, bool) or not isinstance(free_bytes, int) or free_bytes < 0:
        raise ValueError(f"free_bytes must be a byte count >= 0 (torch.cuda.mem_get_info()[0]), got {free_bytes!r}")
    fits = [name for need_gib, name in GPU_MODELS if free_bytes >= need_gib * 2**30]
    return fits[0] if downloads and fits else "embedded"


def _hub_offline() -> bool:
    return not downloads_allowed()  # the kit's one downloads switch


@lru_cache(maxsize=None)
def _notice(line: str) -> None:
    print(line, file=sys.stderr)  # once per process, however often a profile is resolved


def _flag(var: str) -> bool | None:
    """An environment switch as True / False, None when unset or empty; a typo is an error."""
    raw = os.environ.get(var, "").strip().lower()
    if not raw:
        return None
    if raw not in _TRUE + _FALSE:
        raise ValueError(f"{var}={os.environ[var]!r} is not a switch: use 1 or 0")
    return raw in _TRUE


def downloads_setting() -> tuple[bool, str]:
    """(allowed, the setting that decided it, in words). PEFTLAB_ALLOW_DOWNLOADS=1/0 decides; when
    it is unset, HF_HUB_OFFLINE=0 allows and HF_HUB_OFFLINE=1 forbids; with neither, downloads are off."""
    allowed = _flag("PEFTLAB_ALLOW_DOWNLOADS")
    if allowed is not None:
        return allowed, f"PEFTLAB_ALLOW_DOWNLOADS={int(allowed)}"
    offline = _flag("HF_HUB_OFFLINE")
    if offline is not None:
        return not offline, f"HF_HUB_OFFLINE={int(offline)}"
    return False, "neither PEFTLAB_ALLOW_DOWNLOADS nor HF_HUB_OFFLINE is set"


def downloads_allowed() -> bool:
    """May the kit download a hub model? See `downloads_setting`. Read at every call, so
    `%env PEFTLAB_ALLOW_DOWNLOADS=1` in a notebook takes effect at once."""
    return downloads_setting()[0]


def apply_downloads_switch() -> bool:
    """Make huggingface_hub follow `downloads_allowed()` (its offline constant, which it reads from
    HF_HUB_OFFLINE once at import) and keep telemetry off; returns the switch. The environment is
    left as the user set it. The CLI calls this first; `models.resolve_source` before a download."""
    allowed = downloads_allowed()
    import huggingface_hub.constants as hub

    hub.HF_HUB_OFFLINE = not allowed
    if _flag("HF_HUB_DISABLE_TELEMETRY") is not False:  # an explicit HF_HUB_DISABLE_TELEMETRY=0 wins
        hub.HF_HUB_DISABLE_TELEMETRY = True
    return allowed


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
    # The profile names the device: only `gpu` uses CUDA (smoke and cpu stay on the CPU even on a
    # GPU machine, so a test run or a cpu lesson means the same thing everywhere).
    if raw == "gpu" and has_cuda:
        device, dtype = "cuda", cuda_compute_dtype()
    else:
        device, dtype = "cpu", _cpu_compute_dtype()
    chosen_model = model or default_model()
    if device == "cuda" and not model and not os.environ.get("PEFTLAB_MODEL", "").strip():
        free = torch.cuda.mem_get_info()[0]
        chosen_model = gpu_model(free, downloads=not _hub_offline())
        if chosen_model == "embedded":
            why = "hub downloads are off (HF_HUB_OFFLINE)" if _hub_offline() else f"{free / 2**30:.0f} GiB free"
            _notice(f"peftlab: gpu profile on the embedded SmolLM2-135M ({why}); set PEFTLAB_MODEL to choose a model")
    return Profile(name=raw, device=device, model=chosen_model, compute_dtype=dtype,
                   paged_optim=device == "cuda", seed=DEFAULT_SEED)


@lru_cache(maxsize=1)
def profile() -> Profile:
    """The session's profile, read once from the environment."""
    return resolve()


def seed_everything(seed: int = DEFAULT_SEED) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so reruns print the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
