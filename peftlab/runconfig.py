"""A training run from a TOML file: the notebook-04 recipe, on 1 process, N GPUs or several nodes.

    peftlab train --config examples/qlora_orders.toml            (one process)
    torchrun --nproc_per_node 2 -m peftlab.train --config FILE   (DDP: each rank trains on its shard
                                                                  of every global batch, gradients averaged)

The file holds flat `key = value` lines. Keys are `recipe.TrainConfig` fields (`method`, `model`,
`task`, `r`, `alpha`, `target_modules`, `max_steps`, `batch_size`, `lr`, …), a few short names
(`ALIASES`: `targets`, `steps`, `batch`, `rank`) and the run's own keys (`RUN_KEYS`: `output_dir`,
`profile`, `train_file`, `resume`). The profile's recipe (`recipe.recipe(profile)`) fills every
field the file leaves out; `TrainConfig` checks the values. A bad file is one line that names the
file and the key: an unknown key with a did-you-mean, a wrong type, a missing file.

Distributed: `accelerate.PartialState` reads the launcher's environment (torchrun, `accelerate
launch`, SLURM + torchrun) and `Trainer` wraps the model in DDP; rank 0 alone prints, checkpoints
(Trainer) and saves the adapter. Nothing here is home-made: the engine is PyTorch DDP driven by
Hugging Face accelerate (Li et al. 2020, "PyTorch Distributed", arXiv:2006.15704).

Public API:
    load(path) -> RunConfig            parse and check a config file (ValueError: one line)
    run(rc, *, resume=None, log=print) -> dict   train, save the adapter on rank 0, return a summary
    main(argv=None) -> int             `python -m peftlab.train` / `peftlab train`
    torchrun(nproc, module, *args, timeout=1800, cwd=None) -> CompletedProcess
                                       `torchrun --nproc_per_node N -m module args` on a free port
"""
from __future__ import annotations

import argparse
import difflib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from . import recipe, settings

ALIASES = {"targets": "target_modules", "steps": "max_steps", "batch": "batch_size", "rank": "r"}
RUN_KEYS = {  # key -> (type, default, what it is)
    "output_dir": (str, "runs/train", "checkpoints (checkpoint-N) and the final adapter (adapter/) go here"),
    "profile": (str, "", "recipe defaults to start from: smoke | cpu | gpu ('' = the session's profile)"),
    "train_file": (str, "", "a JSONL file of records to train on instead of the task's train split"),
    "resume": (bool, False, "continue from the newest complete checkpoint in output_dir"),
}
TARGET_SETS = {"attention": recipe.ATTENTION, "all-linear": recipe.ALL_LINEAR}
_FIELDS = {f.name: f for f in fields(recipe.TrainConfig)}


@dataclass(frozen=True)
class RunConfig:
    train: recipe.TrainConfig       # the recipe, profile defaults + the file's values
    output_dir: Path                # checkpoints and adapter/ (relative paths: from the current folder)
    train_file: Path | None         # own training records (None: cfg.task's train split)
    resume: bool                    # continue from the last complete checkpoint
    source: Path                    # the config file it came from


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError("reading TOML needs Python ≥ 3.11 or `pip install tomli`") from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err}): write `key = value` lines, strings in quotes") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file: give a TOML config file") from None


def _expected(name: str) -> type:
    """The Python type a key takes in the file (from the TrainConfig default or RUN_KEYS)."""
    if name in RUN_KEYS:
        return RUN_KEYS[name][0]
    default = getattr(recipe.TrainConfig(), name)
    return {tuple: list, type(None): int}.get(type(default), type(default))


def _typed(path: Path, key: str, value: Any) -> Any:
    """`value` converted to what the key takes, or a one-line ValueError naming the file and key."""
    name = ALIASES.get(key, key)
    want = _expected(name)
    if name == "train_examples" and value is None:
        return None
    if name == "target_modules" and isinstance(value, str):
        if value in TARGET_SETS:
            return TARGET_SETS[value]
        value = [v for v in value.replace(",", " ").split() if v]
    ok = (isinstance(value, want) and not (want is int and isinstance(value, bool))) or \
         (want is float and isinstance(value, int) and not isinstance(value, bool))
    if want is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        hint = {list: 'a list of strings, e.g. ["q_proj", "v_proj"], or "attention" / "all-linear"',
                str: 'a string in quotes', bool: "true or false", int: "a whole number without quotes",
                float: "a number, e.g. 2e-4"}[want]
        raise ValueError(f"{path}: {key} = {value!r} has the wrong type ({type(value).__name__}): "
                         f"{key} takes {hint}")
    return tuple(value) if want is list else float(value) if want is float else value


def load(path: str | Path) -> RunConfig:
    """Read a TOML run config; profile defaults fill what it leaves out, TrainConfig checks values."""
    path = Path(path).expanduser()
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"config file {path} {where}: give a TOML file, e.g. examples/smoke.toml")
    raw = _toml(path)
    known = sorted({*_FIELDS, *ALIASES, *RUN_KEYS})
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            raise ValueError(f"{path}: [{key}] tables are not used: write every key at the top level")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{path}: unknown key {key!r}: {hint}keys are {', '.join(known)}")
        name = ALIASES.get(key, key)
        if name in values:
            raise ValueError(f"{path}: {name} is given twice (as {key!r} and another name): keep one")
        values[name] = _typed(path, key, value)
    run = {k: values.pop(k, spec[1]) for k, spec in RUN_KEYS.items()}
    try:
        profile = settings.resolve(run["profile"] or None)
        cfg = recipe.recipe(profile, **values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    train_file = Path(run["train_file"]).expanduser() if run["train_file"] else None
    if train_file is not None and not train_file.is_file():
        raise ValueError(f"{path}: train_file {train_file} does not exist (relative paths start in {Path.cwd()})")
    if not run["output_dir"].strip():
        raise ValueError(f"{path}: output_dir is empty: name a folder, e.g. runs/my-run")
    return RunConfig(train=cfg, output_dir=Path(run["output_dir"]).expanduser(), train_file=train_file,
                     resume=run["resume"], source=path)


def run(rc: RunConfig, *, resume: bool | None = None, log: Callable[[str], None] = print) -> dict:
    """Train `rc` (build_model → Trainer → save_adapter) under whatever launcher started this process.

    Every rank builds the same model (same seed) and trains on its shard of each global batch:
    the global batch is batch_size × grad_accum × world size sequences. Rank 0 prints and saves
    `output_dir/adapter`; the others wait for it. Returns {world_size, backend, global_step,
    losses, adapter} (the same on every rank, adapter path included).
    """
    from accelerate import PartialState

    from . import adapters, records, train

    cfg = rc.train
    state = PartialState(cpu=cfg.device == "cpu")  # reads torchrun / accelerate / SLURM env; gloo on CPU
    say = log if state.is_main_process else (lambda *_: None)
    backend = state.backend or "none"
    how = f"{state.distributed_type.value}, backend {backend}" if state.num_processes > 1 else "one process"
    say(f"world size {state.num_processes} ({how}); "
        f"{cfg.method} on {cfg.model!r}, {cfg.device} {cfg.compute_dtype}, {cfg.max_steps} steps x "
        f"{cfg.batch_size}x{cfg.grad_accum}x{state.num_processes} sequences")
    records_ = records.validate_file(rc.train_file) if rc.train_file else None
    model, tok = train.build_model(cfg)
    result = train.train(cfg, model, tok, rc.output_dir, resume=rc.resume if resume is None else resume,
                         train_records=records_, disable_tqdm=not state.is_main_process)
    adapter = rc.output_dir / "adapter"
    state.wait_for_everyone()
    if state.is_main_process:
        adapters.save_adapter(model, adapter, log=say)
    state.wait_for_everyone()
    say(f"done: step {result.global_step}, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}"
        if result.losses else f"done: step {result.global_step} (nothing left to train)")
    return {"world_size": state.num_processes, "backend": backend, "global_step": result.global_step,
            "losses": result.losses, "adapter": str(adapter)}


def torchrun(nproc: int, module: str, *args: str, timeout: float = 1800,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` as `nproc` local processes under torchrun (gloo on a CPU), on a
    free port (the default 29500 may be taken), one thread per process (OMP_NUM_THREADS=1), with
    this interpreter's torchrun and this checkout of peftlab first on the path. Output captured."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a whole number ≥ 1, got {nproc!r}")
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if exe is None:
        raise ValueError("torchrun not found next to this Python: it ships with torch; reinstall torch")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    cmd = [exe, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", port,
           "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, help="a TOML run config (see examples/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m peftlab.train --config FILE [--resume]`: errors a user can fix are one line, exit 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = add_arguments(argparse.ArgumentParser(prog="python -m peftlab.train")).parse_args(argv)
    try:
        run(load(args.config), resume=args.resume or None)
    except (ValueError, FileNotFoundError) as err:
        print(f"peftlab: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
