"""What training leaves on disk: adapters (saved atomically, never over other files), Trainer
checkpoints, and the 4-bit merge.

    merged W = dequant_NF4(W_4bit) + (α/r)·B·A      (QLoRA, Dettmers et al. 2023, arXiv:2305.14314)

An adapter is trained against the *quantized* base, so it is merged into the dequantized 4-bit
weights — not into the original checkpoint (off by the quantization error) and not quantized
again afterwards (new error).

Public API (notebook 04 and the showdown call these):
    save_adapter(model, path, *, log=print) -> Path   atomic; replaces only an earlier save
    last_checkpoint(output_dir) -> str | None         newest *complete* checkpoint-N folder
    checkpoint_problem(path) -> str | None            a file of the checkpoint that cannot load
    record_config(checkpoint, cfg);  config_differences(checkpoint, cfg) -> list[str]
    resume_point(output_dir, cfg, resume) -> str | None   the checks before train.train starts
    dequantized_base(cfg, dtype=fp32) -> nn.Module  dense copy of the 4-bit base: W = dequant_NF4(W_4bit)
    merge_4bit(adapter_dir, cfg, dtype=fp32) -> nn.Module   dequantize the 4-bit base, then merge

On a CPU the dense copy also evaluates faster: a 4-bit layer decodes its weights again on every
forward pass, so generating an answer decodes the whole model once per token (notebook 04).
"""
from __future__ import annotations

import json
import re
import zipfile
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
    done = [p for p in out.iterdir() if _is_checkpoint(p)]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


CONFIG_FILE = "peftlab_config.json"  # the TrainConfig a checkpoint was trained with (train.train writes it)
# What must match to continue a checkpoint: these decide the adapter's shape and the base it fits.
RESUME_FIELDS = ("method", "model", "r", "alpha", "dropout", "target_modules", "quant_type", "double_quant")


def _is_checkpoint(p: Path) -> bool:
    return p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name) is not None and (p / "trainer_state.json").is_file()


def checkpoint_problem(path: str | Path) -> str | None:
    """The first file of a Trainer checkpoint that cannot load (safetensors cut short, a torch
    .pt/.pth file that is not a whole zip archive, unreadable trainer_state.json), or None."""
    path = Path(path)
    weights = [f for f in sorted(path.glob("*.safetensors"))]
    if not weights and not list(path.glob("*.bin")):
        return "it holds no adapter or model weights"
    for f in weights:
        problem = models.safetensors_problem(f)
        if problem:
            return problem
    for f in sorted(path.glob("*.pt")) + sorted(path.glob("*.pth")):
        if not zipfile.is_zipfile(f):  # torch.save writes a zip archive; a cut-short one has no directory
            return f"{f.name} is cut short or not a torch file"
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    return None


def record_config(checkpoint: str | Path, cfg: recipe.TrainConfig) -> None:
    """Write cfg into the checkpoint folder (CONFIG_FILE), so a resume can say what differs."""
    (Path(checkpoint) / CONFIG_FILE).write_text(json.dumps(recipe.config_dict(cfg), indent=1))


def config_differences(checkpoint: str | Path, cfg: recipe.TrainConfig) -> list[str]:
    """'field: checkpoint X, config Y' for every RESUME_FIELDS entry that differs. Reads CONFIG_FILE;
    for a checkpoint without it, the adapter's own adapter_config.json (r, alpha, DoRA, targets)."""
    ck = Path(checkpoint)
    now = recipe.config_dict(cfg)
    try:
        then = json.loads((ck / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        then = None
    if isinstance(then, dict):
        return [f"{k}: checkpoint {then.get(k)!r}, config {now[k]!r}" for k in RESUME_FIELDS
                if then.get(k) != now[k] and (cfg.quantized or k not in ("quant_type", "double_quant"))]
    try:
        peft = json.loads((ck / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return [] if cfg.method == "full" else [f"method: checkpoint holds a whole model, config {cfg.method!r}"]
    if cfg.method == "full":
        return [f"method: checkpoint holds a {'DoRA' if peft.get('use_dora') else 'LoRA'} adapter, config 'full'"]
    out = []
    if bool(peft.get("use_dora")) != (cfg.method in ("dora", "qdora")):
        out.append(f"method: checkpoint {'DoRA' if peft.get('use_dora') else 'LoRA'}, config {cfg.method!r}")
    for key, mine in (("r", cfg.r), ("lora_alpha", cfg.alpha), ("lora_dropout", cfg.dropout)):
        if peft.get(key) is not None and peft[key] != mine:
            out.append(f"{key}: checkpoint {peft[key]!r}, config {mine!r}")
    theirs = peft.get("target_modules")
    if isinstance(theirs, list) and cfg.target_modules != (recipe.ALL_LINEAR_PEFT,) and set(theirs) != set(cfg.target_modules):
        out.append(f"target_modules: checkpoint {','.join(sorted(theirs))}, config {','.join(cfg.target_modules)}")
    return out


def resume_point(output_dir: str | Path, cfg: recipe.TrainConfig, resume: bool) -> str | None:
    """What train.train checks about output_dir before anything runs; returns the checkpoint to
    resume from (None: start fresh). Refused with one line: output_dir is a file or itself a
    checkpoint folder; resume=False where earlier checkpoints would be overwritten; resume=True
    from a checkpoint whose files cannot load or that was trained with another config."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file: pass a folder for the checkpoints")
    if re.fullmatch(r"checkpoint-\d+", out.name) or (out / "trainer_state.json").is_file():
        raise ValueError(f"output_dir {out} is itself a checkpoint folder: pass its parent {out.parent} "
                         "as output_dir (resume=True continues from its newest checkpoint)")
    if not resume:
        old = sorted((p.name for p in out.iterdir() if _is_checkpoint(p)), key=lambda n: int(n.split("-")[1])) \
            if out.is_dir() else []
        if old:
            raise ValueError(f"{out} already holds checkpoints of an earlier run ({', '.join(old[-3:])}): pass "
                             "resume=True to continue it, or a new output_dir to start over (they would be overwritten)")
        return None
    start = last_checkpoint(out)
    if start is None:
        return None
    problem = checkpoint_problem(start)
    if problem:
        raise ValueError(f"checkpoint {start} is damaged ({problem}): delete that folder to resume from the one "
                         "before, or start over with resume=False and a new output_dir")
    diff = config_differences(start, cfg)
    if diff:
        raise ValueError(f"checkpoint {start} was trained with another config ({'; '.join(diff)}): resume with "
                         "the checkpoint's settings, or start over with resume=False and a new output_dir")
    return start


def dequantized_base(cfg: recipe.TrainConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dense model (in `dtype`, on cfg.device) whose linear weights are dequant_NF4(W_4bit): the
    values cfg's 4-bit base computes with, decoded once instead of on every forward pass."""
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
    return dense.eval()


def merge_4bit(adapter_dir: str | Path, cfg: recipe.TrainConfig,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dense model (in `dtype`, on cfg.device) = dequantize(4-bit base) + merged adapter."""
    from peft import PeftModel

    return PeftModel.from_pretrained(dequantized_base(cfg, dtype), str(adapter_dir)).merge_and_unload().eval()
