"""What training leaves on disk: adapters (saved atomically, never over other files), Trainer
checkpoints, and the 4-bit merge.

    merged W = dequant_NF4(W_4bit) + (α/r)·B·A      (QLoRA, Dettmers et al. 2023, arXiv:2305.14314)

An adapter is trained against the *quantized* base, so it is merged into the dequantized 4-bit
weights — not into the original checkpoint (off by the quantization error) and not quantized
again afterwards (new error).

Public API (notebook 04 and the showdown call these):
    save_adapter(model, path, *, log=print) -> Path   atomic; replaces only an earlier save
    last_checkpoint(output_dir) -> str | None         newest *complete* checkpoint-N folder
    merge_4bit(adapter_dir, cfg, dtype=fp32) -> nn.Module   dequantize the 4-bit base, then merge
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import models, recipe

# What `save_pretrained` writes: a PEFT adapter, or a whole model (full fine-tuning). A folder
# holding only these (and at least a config) is an earlier save and may be replaced.
SAVED_FILES = re.compile(r"(adapter_config\.json|adapter_model\.(safetensors|bin)|README\.md|config\.json|"
                         r"generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)")
CONFIGS = ("adapter_config.json", "config.json")


def _foreign(path: Path) -> list[str]:
    """Names in the folder `path` that save_pretrained did not write (everything, if no config)."""
    names = sorted(p.name for p in path.iterdir())
    if names and not any(c in names for c in CONFIGS):
        return names
    return [n for n in names if not SAVED_FILES.fullmatch(n)]


def save_adapter(model: nn.Module, path: str | Path, *, log: Callable[[str], None] | None = print) -> Path:
    """save_pretrained into a temporary sibling folder, then rename it into place; returns `path`.

    `path` may be new, an empty folder or an earlier save (replaced as a whole, atomically: an
    interrupted save leaves the earlier adapter untouched). A folder with anything else in it —
    a Trainer output_dir with checkpoints, your own files — or a file is refused with a
    ValueError and left as it was. `log` gets one line saying what was done (None: silent).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder: save the adapter to a new folder path, "
                         f"e.g. {path.with_name(path.name + '-adapter')}")
    replaced = path.is_dir() and any(path.iterdir())
    if replaced:
        other = _foreign(path)
        if other:
            raise ValueError(f"{path} holds files save_adapter did not write ({', '.join(other[:3])}"
                             f"{', …' if len(other) > 3 else ''}): save into a new or empty folder, "
                             f"e.g. {path / 'adapter'}")
    with models.atomic_folder(path) as tmp:
        model.save_pretrained(tmp)
    if log is not None:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        log(f"saved {'(replacing the earlier save) ' if replaced else ''}to {path}: {size / 1e6:.1f} MB")
    return path


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N folder that is complete (Trainer writes trainer_state.json last);
    names that are not exactly checkpoint-<number> (e.g. a copy) are skipped."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    done = [p for p in out.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)
            and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def merge_4bit(adapter_dir: str | Path, cfg: recipe.TrainConfig,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dense model (in `dtype`, on cfg.device) = dequantize(4-bit base) + merged adapter."""
    from peft import PeftModel

    bnb = models.import_bitsandbytes()
    q = models.load_model(cfg.model, bits=4, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                          dtype=torch.float32, device=cfg.device)  # fresh: no inference pass repacked it
    dense = models.load_model(cfg.model, dtype=dtype, device=cfg.device)
    n = 0
    for name, mod in q.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)  # (out, in)
            dense.get_submodule(name).weight.data.copy_(w.to(dtype))
            n += 1
    assert n > 0, "no Linear4bit found in the 4-bit base"
    del q
    return PeftModel.from_pretrained(dense, str(adapter_dir)).merge_and_unload().eval()
