"""Model sources and loading: the embedded default, a local path, or a hub id; dense or 4-bit.

    source ∈ {"embedded", local folder, hub id}  ×  bits ∈ {None (dense), 4 (NF4 / FP4, ± double quant)}

The embedded default is SmolLM2-135M-Instruct (Apache-2.0), converted once into the cache by
`prepare()` (`peftlab.cache`, re-exported here), so every later load is the same
`from_pretrained(path, ...)` a GPU user makes with a hub id. A hub id is fetched only when
downloads are allowed (`settings.downloads_allowed()`); otherwise its local copy in the HF cache
is used, by path, or a one-line error says how to allow downloads. 4-bit loading goes through
the real `BitsAndBytesConfig` path (QLoRA, Dettmers et al. 2023, arXiv:2305.14314), and every
4-bit model gets `guard_4bit` (see there).
"""
from __future__ import annotations

import io
import logging
import os
import socket
import threading
import warnings
from collections.abc import Mapping
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from . import settings

# the model cache lives in peftlab.cache; its names stay reachable as models.prepare, models.ModelError, ...
from .cache import (EMBEDDED, EMBEDDED_GGUF, EMBEDDED_NAME, EMBEDDED_PACKAGE, PREPARE_CMD,  # noqa: F401
                    ModelError, atomic_folder, cache_dir, embedded_path, is_prepared, prepare,
                    safetensors_problem, verify)
_PROBE_S = 3.0  # seconds to wait for the hub's host before saying it cannot be reached


def import_bitsandbytes():
    """Import bitsandbytes without its start-up noise on the learner's screen.

    On CPU it logs "Failed to load CPU gemm_4bit_forward from kernels-community"
    (that package would fetch kernels from a hub; the built-in kernels are used).
    """
    quiet = io.StringIO()
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with redirect_stdout(quiet), redirect_stderr(quiet), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
    finally:
        logging.disable(prev)
    return bnb


def _hub_snapshot(name: str) -> str | None:
    """The local folder of a hub model already in the HF cache (no network), None if not there."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or an incomplete cache entry
        return None
    return path if (Path(path) / "config.json").is_file() else None


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached within _PROBE_S seconds (DNS, no route), None if it can.
    With a proxy configured the probe is left to the download itself."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    errors: list[OSError] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=_PROBE_S).close()
        except OSError as err:
            errors.append(err)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(_PROBE_S + 0.5)  # a DNS lookup has no timeout of its own
    if t.is_alive():
        return f"no answer from {host} within {_PROBE_S:.0f} s"
    return f"cannot reach {host} ({errors[0].strerror or errors[0]})" if errors else None


def resolve_source(name: str | None = None) -> str:
    """Turn "embedded" / a local folder / a hub id into what `from_pretrained` takes.

    name None: $PEFTLAB_MODEL, else the embedded model (`settings.default_model`). The embedded
    model must be prepared and intact (`cache.verify(full=False)`). A hub id: downloads off → its
    copy in the HF cache (a local path), else ModelError "downloads are off"; downloads on and the
    hub unreachable → the cached copy, else ModelError at once (no minute of retries).
    """
    name = (name or settings.default_model()).strip()
    if name == EMBEDDED:
        path = embedded_path()
        if not is_prepared(path):
            raise ModelError(f"the embedded model is not prepared at {path}: run `{PREPARE_CMD}` "
                             "(or `make lab` / `make test`, which run it)")
        verify(path, full=False)
        return str(path)
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelError(f"{local} has no config.json: point PEFTLAB_MODEL at a folder saved "
                             "with save_pretrained, or use 'embedded'")
        return str(local)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelError(f"unknown model {name!r}: use 'embedded', a local folder with config.json, "
                         "or a hub id like 'Qwen/Qwen2.5-0.5B-Instruct'")
    allowed, why = settings.downloads_setting()
    cached = _hub_snapshot(name)
    if not allowed:
        if cached:
            return cached
        raise ModelError(f"hub model {name!r} is not downloaded and {why}: downloads are off; set "
                         f"{settings.ALLOW_DOWNLOADS} to download it, or use 'embedded' or a local folder")
    problem = _hub_unreachable()
    if problem:
        if cached:
            return cached
        raise ModelError(f"cannot download {name!r}: {problem}; check the network (or set HTTPS_PROXY), "
                         "or use 'embedded' or a local folder")
    settings.apply_downloads_switch()  # huggingface_hub may have read HF_HUB_OFFLINE=1 at import
    return name


def local_folder(name: str | None = None) -> str:
    """`resolve_source`, with a hub id turned into its local snapshot folder (downloaded unless
    HF_HUB_OFFLINE), for tools that read config.json from disk, like the VRAM estimator."""
    from huggingface_hub import snapshot_download

    source = resolve_source(name)
    return source if Path(source).is_dir() else snapshot_download(source)


def to_device(batch: Any, model: nn.Module | torch.device | str) -> Any:
    """`batch` (a tensor, or a dict — BatchEncoding too —, list or tuple of them) on the device of
    `model`'s input embeddings (or on a device given by name); other values pass through unchanged."""
    if isinstance(model, nn.Module):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        param = emb.weight if emb is not None else next(model.parameters(), None)
        if param is None:
            raise ValueError(f"{type(model).__name__} has no parameters to take a device from: pass a device")
        model = param.device
    if isinstance(batch, torch.Tensor):
        return batch.to(model)
    if isinstance(batch, Mapping):
        return {k: to_device(v, model) for k, v in batch.items()}
    return type(batch)(to_device(v, model) for v in batch) if isinstance(batch, (list, tuple)) else batch


def bnb_config(quant_type: str = "nf4", double_quant: bool = True,
               compute_dtype: torch.dtype | None = None):
    """The real `BitsAndBytesConfig` for 4-bit weights (NF4 or FP4, blocksize 64)."""
    from transformers import BitsAndBytesConfig

    if quant_type not in ("nf4", "fp4"):
        raise ValueError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    import_bitsandbytes()
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant,
                              bnb_4bit_compute_dtype=compute_dtype or torch.float32)


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu" (what a profile picks too)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp32 on the CPU; on CUDA the GPU's 16-bit type (bf16 from Ampere on, else fp16)."""
    return torch.float32 if device == "cpu" else settings.torch_dtype(settings.cuda_compute_dtype())


def _as_dtype(dtype: torch.dtype | str | None, what: str) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in settings.DTYPES:
        return settings.DTYPES[dtype]
    raise ValueError(f"{what} must be a torch dtype or one of {', '.join(settings.DTYPES)}, got {dtype!r}")


def load_model(name: str | None = None, *, bits: int | None = None, quant_type: str = "nf4",
               double_quant: bool = True, dtype: torch.dtype | str | None = None,
               compute_dtype: torch.dtype | str | None = None, device: str | None = None) -> nn.Module:
    """Load a causal LM dense (`bits=None`) or 4-bit (`bits=4`), guarded and in eval mode.

    Reads no session profile; callers that follow one pass its device and dtype.
    name: None = $PEFTLAB_MODEL, else the embedded model. device: "cpu" | "cuda";
    default `default_device()`. dtype: dtype of the dense (non-quantized) weights, a torch
    dtype or "bf16" | "fp16" | "fp32"; default `default_dtype(device)` (fp32 on CPU).
    compute_dtype: dtype of 4-bit matmuls; default = dtype.
    """
    from transformers import AutoModelForCausalLM

    if bits not in (None, 4):
        raise ValueError(f"bits must be None (dense) or 4, got {bits!r}")
    device = device or default_device()
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible here: load with device='cpu'")
    dtype = _as_dtype(dtype, "dtype") or default_dtype(device)
    compute_dtype = _as_dtype(compute_dtype, "compute_dtype")
    source = resolve_source(name)
    kwargs: dict = {"dtype": dtype}
    if bits == 4:
        kwargs["quantization_config"] = bnb_config(quant_type, double_quant, compute_dtype or dtype)
        kwargs["device_map"] = {"": device if device == "cpu" else 0}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a 2-second "Loading weights" bar is noise in a lesson
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gemm_4bit_forward.*")
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as err:  # OSError: a missing file or a failed download; safetensors: a broken file
        broken = "safetensor" in type(err).__module__ or "header" in str(err).lower()
        if not (broken or isinstance(err, OSError)):
            raise
        raise ModelError(f"could not load {source!r} ({'corrupted: ' if broken else ''}"
                         f"{str(err).strip().splitlines()[0][:200]}): {_load_fix(source)}") from None
    finally:
        hf_logging.enable_progress_bar()
    if bits is None:
        model.to(device)
    guard_4bit(model)
    return model.eval()


def _load_fix(source: str) -> str:
    if source == str(embedded_path()):
        return f"run `{PREPARE_CMD} --force` to rebuild the embedded model"
    if Path(source).exists():
        return "save that folder again with save_pretrained, or delete it from the HF cache and download it again"
    return "check the hub id and the network, or use 'embedded' or a local folder"


def load_tokenizer(name: str | None = None):
    """The tokenizer (with its chat template) that belongs to `load_model(name)`."""
    from transformers import AutoTokenizer

    source = resolve_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise ModelError(f"could not load the tokenizer of {source!r} ({str(err).strip().splitlines()[0][:200]}): "
                         f"{_load_fix(source)}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# --- the bitsandbytes CPU guard -------------------------------------------------------------
# bitsandbytes 0.50.2 on CPUs with AVX512-BF16: an eval-mode forward whose input does not need
# grad repacks a Linear4bit weight for a CPU inference kernel and never unpacks it; later
# training forwards then run an op with no autograd kernel, so the gradient to the layer's input
# is lost or wrong and LoRA in all earlier layers stops learning (docs/findings.md, "The bitsandbytes CPU repack bug").
# The guard turns that repacking off. We do not "unpack before training" instead: bitsandbytes'
# inverse re-quantizes the double-quantized absmax, so the weights would silently change.

def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn gradient (activation) checkpointing on or off; works on PEFT-wrapped models too.

    Non-reentrant checkpointing, so the frozen embeddings need no requires_grad hook.
    transformers ≥ 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kw = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kw) if on else \
            base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw) if on else \
            base.gradient_checkpointing_disable()


def guard_4bit(model: nn.Module) -> int:
    """Stop every bitsandbytes Linear4bit in `model` from repacking for CPU inference.

    Returns the number of 4-bit layers guarded. Idempotent; works on a bare
    layer, a transformers model or a PEFT-wrapped model. A layer that was
    already repacked is converted back (best effort, see the note above).
    """
    bnb = import_bitsandbytes()
    n = 0
    for mod in model.modules():
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        mod.support_avx512bf16_for_cpu = False  # the switch Linear4bit.forward checks
        qs = getattr(mod.weight, "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            mod.weight.data, mod.weight.quant_state = _convert_weight_packed_for_cpu_inverse(mod.weight.data, qs)
        n += 1
    return n
