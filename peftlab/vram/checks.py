"""The estimator's input checks: a config.json file, an architecture's sizes, one step's settings.

Every bad input is one `ValueError` line that names the file or the field, says what was wrong
and what to write instead; nothing here counts bytes (that is `vram.terms`), and nothing here
imports the rest of `vram`, so `spec` and `terms` can both lean on it. The limits are far above
any released model (LLaMA-3-405B: hidden 16384, 126 layers, vocab 128256): a larger value is a
typo, and keeping below them keeps every byte count a finite float.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from pathlib import Path

LIMITS = {"hidden": 2**17, "intermediate": 2**20, "layers": 2**12, "heads": 2**12, "kv_heads": 2**12,
          "vocab": 2**23, "head_dim": 2**12, "seq_len": 2**20, "batch": 2**16, "rank": 2**17}
NEEDED = "hidden_size, num_attention_heads, num_hidden_layers and vocab_size"
_KINDS = {list: "a list", str: "a string", type(None): "null", bool: "a boolean", int: "a number",
          float: "a number"}
_CONFIG_NAMES = {"hidden": "hidden_size", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads"}
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}


def why_not_count(v, cap: int) -> str | None:
    """Why `v` is not a whole number in [1, cap] (None when it is), in words a learner can act on."""
    if isinstance(v, bool):
        return f"got the boolean {v!r}: give a whole number"
    if isinstance(v, str):
        return f"got the string {v!r}: write the number without quotes"
    if isinstance(v, float):
        whole = math.isfinite(v) and v == int(v)
        return f"got {v!r}: give a whole number" + (f" ({int(v)}, not {v})" if whole else "")
    if not isinstance(v, int):
        return f"got {v!r} ({type(v).__name__}): give a whole number"
    if v < 1:
        return f"got {v}: it must be at least 1"
    if v > cap:
        return f"got {v:,}: that is beyond any real model (at most {cap:,}); check for a typo"
    return None


# --- config.json --------------------------------------------------------------------------------

def read_config(path: Path) -> dict:
    """The JSON object of a config.json, its `text_config` (multimodal models) merged over the top."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"cannot read config {path}: no such file; give the path of a model's "
                         "config.json (or its folder) or a preset name") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"cannot read config {path}: byte {err.start} is not UTF-8; save the file "
                         "as UTF-8 JSON") from None
    except OSError as err:
        raise ValueError(f"cannot read config {path}: {err.strerror or err.__class__.__name__}; "
                         "check the path and its permissions") from None
    if not text.strip():
        raise ValueError(f"cannot read config {path}: the file is empty; it must be one JSON object "
                         f"with {NEEDED}")
    try:
        c = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"cannot read config {path}: not valid JSON (line {err.lineno}, column "
                         f"{err.colno}: {err.msg}); fix the file or give a preset name") from None
    if not isinstance(c, dict):
        raise ValueError(f"config {path} holds {_KINDS.get(type(c), type(c).__name__)}, not a JSON "
                         f"object: a config.json is one {{...}} object with {NEEDED}")
    tc = c.get("text_config")
    if tc is not None and not isinstance(tc, dict):
        raise ValueError(f"config {path}: text_config is {_KINDS.get(type(tc), type(tc).__name__)}, not an "
                         "object; multimodal configs nest the text model's sizes there as {...}: fix it "
                         "or remove the key")
    for key, kind in (("model_type", str), ("hidden_act", str),
                      ("tie_word_embeddings", bool), ("use_parallel_residual", bool), ("mlp_bias", bool),
                      ("attention_bias", bool), ("rms_norm_eps", (int, float))):
        v = (tc or {}).get(key, c.get(key))
        if v is not None and (not isinstance(v, kind) or kind != bool and isinstance(v, bool)):
            want = {str: "a string", bool: "true or false"}.get(kind, "a number")
            raise ValueError(f"config {path}: {key} must be {want}, got {v!r}: fix the value or remove the key")
    return {**c, **(tc or {})}


def count(c: dict, path: Path, field: str, keys: tuple[str, ...], default: int | None = None) -> int:
    """The first of `keys` that config `c` sets (not null), as a whole number in [1, LIMITS[field]]."""
    key = next((k for k in keys if c.get(k) is not None), None)
    if key is None:
        if default is not None:
            return default
        alt = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
        raise ValueError(f"config {path} lacks a field the estimator needs: {keys[0]}{alt}; a config.json "
                         f"must give {NEEDED}")
    why = why_not_count(c[key], LIMITS[field])
    if why:
        raise ValueError(f"config {path}: {key} must be a whole number from 1 to {LIMITS[field]:,}, {why}")
    return c[key]


def check_arch(a, where: str = "") -> None:
    """ValueError unless every size of the `Arch` is in range and the heads split evenly.
    `where` ("config PATH: ") switches the message to the config.json key names."""
    name = (lambda f: _CONFIG_NAMES.get(f, f)) if where else (lambda f: f)
    for f in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"):
        why = why_not_count(getattr(a, f), LIMITS[f])
        if why:
            raise ValueError(f"{where or 'architecture field '}{name(f)} must be a whole number from 1 to "
                             f"{LIMITS[f]:,}, {why}")
    if a.head_dim != 0 and why_not_count(a.head_dim, LIMITS["head_dim"]):
        raise ValueError(f"{where}head_dim must be 0 (= hidden / heads) or a whole number from 1 to "
                         f"{LIMITS['head_dim']:,}, {why_not_count(a.head_dim, LIMITS['head_dim'])}")
    if a.heads % a.kv_heads:
        raise ValueError(f"{where}{name('heads')} ({a.heads}) must be a multiple of {name('kv_heads')} "
                         f"({a.kv_heads}): each key/value head serves a whole group of query heads")
    if not a.head_dim and a.hidden % a.heads:
        raise ValueError(f"{where}{name('heads')} ({a.heads}) does not divide {name('hidden')} ({a.hidden}):"
                         " head_dim = hidden / heads must be whole; fix one of them or set head_dim")


# --- one step's settings ------------------------------------------------------------------------

def settings_from(base, overrides: dict):
    """`base` (a `Settings`) with keyword `overrides`; an unknown keyword names the close one."""
    if not dataclasses.is_dataclass(base) or isinstance(base, type):
        raise ValueError(f"settings must be a vram.Settings, got {type(base).__name__}: build one with "
                         "vram.Settings(method=..., rank=...) or pass the fields as keywords")
    names = [f.name for f in dataclasses.fields(base)]
    for k in overrides:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1, cutoff=0.6)
            raise ValueError(f"unknown setting {k!r}: {f'did you mean {close[0]}? ' if close else ''}"
                             f"the settings are {', '.join(names)}")
    return dataclasses.replace(base, **overrides)


def one_of(field: str, value, allowed) -> None:
    """ValueError unless `value` is one of `allowed` (strings); suggests the close spelling."""
    if isinstance(value, str) and value in allowed:
        return
    text = str(value).lower().removeprefix("torch.")
    close = [_DTYPE_ALIASES[text]] if field == "dtype" and text in _DTYPE_ALIASES else \
        difflib.get_close_matches(text, list(allowed), n=1, cutoff=0.5)
    hint = f": did you mean {close[0]}?" if close else ""
    raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}{hint}")


def check_settings(s, choices: dict[str, tuple]) -> None:
    """Field-by-field checks of a `Settings` (ranges that depend on the architecture are in terms)."""
    for f, allowed in choices.items():
        one_of(f, getattr(s, f), allowed)
    for f in ("seq_len", "batch"):
        why = why_not_count(getattr(s, f), LIMITS[f])
        if why:
            raise ValueError(f"{f} must be a positive integer (1 to {LIMITS[f]:,}), {why}")
    for f in ("grad_ckpt", "double_quant"):
        if not isinstance(getattr(s, f), bool):
            raise ValueError(f"{f} must be True or False, got {getattr(s, f)!r}: pass a bool" +
                             (" (a non-empty string, even 'false', would count as on)"
                              if isinstance(getattr(s, f), str) else ""))
    d = s.lora_dropout
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
        raise ValueError(f"lora_dropout must be a number in [0, 1), got {d!r}: e.g. 0.05, or 0 for none")
    if s.method != "full":
        why = why_not_count(s.rank, LIMITS["rank"])
        if why:
            raise ValueError(f"rank must be a positive integer, {why} (typical LoRA ranks: 4-64)")
