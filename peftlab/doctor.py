"""`peftlab doctor`: what this machine can do for the lessons, and the fix for each problem.

Each check is a `Check(name, value, ok, fix)`; `run()` returns them and
`report()` formats them as a table. Notebook 00 and the CLI call the same code.
"""
from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata

import torch

from . import models, settings

GIB = 1024**3


@dataclass(frozen=True)
class Check:
    name: str    # what was checked, e.g. "torch"
    value: str   # what was found, e.g. "2.13.0 (CPU build)"
    ok: bool     # False when a lesson would fail or be slow because of it
    fix: str     # what to do when not ok ("" when ok)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _ram_bytes() -> tuple[int, int | None]:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    avail = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    return total, avail


def precision_line(capability: tuple[int, int]) -> str:
    """What the kit computes in on a GPU of this compute capability (the rule is settings.cuda_compute_dtype)."""
    major, minor = capability
    if settings.cuda_compute_dtype(capability) == "bf16":
        return f"bf16 (compute capability {major}.{minor} ≥ 8.0)"
    return f"fp16 (compute capability {major}.{minor} < 8.0 has no native bf16, e.g. T4 7.5, V100 7.0)"


def _gpu_checks() -> list[Check]:
    if not torch.cuda.is_available():
        return [Check("device", f"CPU ({os.cpu_count()} cores), no CUDA GPU", True, ""),
                Check("precision", f"CPU compute dtype {settings.resolve('cpu').compute_dtype}", True, "")]
    name = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory
    out = [Check("device", f"{name}, {total / GIB:.1f} GiB", True, ""),
           Check("precision", precision_line(torch.cuda.get_device_capability(0)), True, "")]
    if total < 12 * GIB:
        out.append(Check("GPU memory", f"{total / GIB:.1f} GiB", False,
                         "use QLoRA with gradient checkpointing and a ≤3B model; see notebook 05"))
    return out


def _bnb_check() -> Check:
    ver = _version("bitsandbytes")
    if ver is None:
        return Check("bitsandbytes", "missing", False, "run `make lab` (or pip install bitsandbytes)")
    try:
        models.import_bitsandbytes()
        from bitsandbytes.functional import has_avx512bf16
    except Exception as err:  # a broken native library shows up here
        return Check("bitsandbytes", f"{ver}, import failed: {err}", False,
                     "reinstall with `pip install --force-reinstall bitsandbytes`; on Colab restart the runtime")
    backend = "CUDA" if torch.cuda.is_available() else (
        "CPU (AVX512-BF16 kernels; 4-bit training guarded by peftlab)" if has_avx512bf16() else "CPU")
    return Check("bitsandbytes", f"{ver}, backend {backend}", True, "")


def run() -> list[Check]:
    """Run every check. Never raises: a failing check carries its fix instead."""
    checks = [Check("python", platform.python_version(), True, "")]
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate"):
        ver = _version(pkg)
        checks.append(Check(pkg, ver or "missing", ver is not None,
                            "" if ver else "run `make lab` to install the pinned stack"))
    checks.append(_bnb_check())
    checks += _gpu_checks()
    total, avail = _ram_bytes()
    checks.append(Check("RAM", f"{total / GIB:.1f} GiB" + (f" ({avail / GIB:.1f} available)" if avail else ""),
                        total >= 4 * GIB, "" if total >= 4 * GIB else "close other programs; 4 GiB is the minimum"))
    cache = models.cache_dir()
    probe = cache if cache.exists() else cache.parent if cache.parent.exists() else cache.anchor
    free = shutil.disk_usage(probe).free
    checks.append(Check("disk", f"{free / GIB:.1f} GiB free at {cache}", free >= 2 * GIB,
                        "" if free >= 2 * GIB else "free 2 GiB or set PEFTLAB_CACHE to a bigger disk"))
    try:
        prof = settings.resolve()  # read the environment now, not the session's cached profile
        checks.append(Check("profile", f"{prof.name} (device {prof.device}, compute {prof.compute_dtype})", True, ""))
        model_name = prof.model
    except ValueError as err:
        checks.append(Check("profile", os.environ.get("PEFTLAB_PROFILE", ""), False, str(err)))
        model_name = os.environ.get("PEFTLAB_MODEL", "") or models.EMBEDDED
    try:
        src = models.resolve_source(model_name)
        if src == str(models.embedded_path()):
            models.verify(models.embedded_path(), full=True)  # sizes and sha256, not only the marker
        checks.append(Check("model", f"{model_name} → {src} (ready)", True, ""))
    except ValueError as err:
        checks.append(Check("model", model_name, False, str(err)))
    try:
        allowed, why = settings.downloads_setting()
        checks.append(Check("hub", f"downloads allowed ({why})" if allowed else
                            f"downloads off ({why}); {settings.ALLOW_DOWNLOADS} allows hub models", True, ""))
    except ValueError as err:
        checks.append(Check("hub", "unreadable switch", False, str(err)))
    return checks


def report(checks: list[Check] | None = None) -> str:
    """The checks as an aligned text table, problems last with their fixes."""
    checks = run() if checks is None else checks
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok ' if c.ok else 'FIX'} {c.name:<{width}}  {c.value}" for c in checks]
    problems = [c for c in checks if not c.ok]
    lines.append("")
    lines.append("all good" if not problems else f"{len(problems)} problem(s):")
    lines += [f"  - {c.name}: {c.fix}" for c in problems]
    return "\n".join(lines)
