"""The showdown: full fine-tuning, LoRA, QLoRA, DoRA and QDoRA measured on one task, one budget.

    per run:    trainable params, adapter bytes on disk, peak memory, median s/step, held-out score
    per method: mean ± std over seeds;  memory (CPU, counted) = weights + grads + optimizer + saved activations

Every method gets the same model, data, step budget, batch and seeds (`recipe.recipe`); only
the learning rate of full fine-tuning differs (adapters start from B = 0 and tolerate a 10×
higher rate; full FT at 1e-3 wrecks a pretrained model). Memory on CPU is *counted*: bytes of
the real parameter, gradient and optimizer tensors plus the largest set of tensors autograd
saved for backward in any step (each storage once); the process peak RSS is recorded beside it
(measured, noisier: allocator caches). On CUDA `torch.cuda.max_memory_allocated()` is the peak.
Methods: LoRA (Hu et al. 2021), QLoRA (Dettmers et al. 2023), DoRA (Liu et al. 2024).

Public API (benchmarks/showdown.py and notebook 06 call these):
    Plan(...) frozen;  plan(profile=None) -> Plan          what to run, per profile (sizes + hardware)
    Plan.configs() -> [TrainConfig];  Plan.config(method, r, seed) -> TrainConfig
    MemoryMeter(model): TrainerCallback                    counts the memory terms while training
    run_one(cfg, eval_n, workdir) -> dict                  one training run, all its numbers
    run_all(plan, out_path, log=print) -> dict             every run, written to JSON as it goes
    merge(parts, out_path) -> dict;  missing(results, plan) -> [(method, r, seed)]
    load(path) -> dict;  summary(results, r=None) -> list[dict]   mean ± std per (method, r)
The verdicts against the seed's claims live in `ledger`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from transformers import TrainerCallback

from . import adapters, data, evaluate, memory, recipe, settings, train

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


@dataclass(frozen=True)
class Plan:
    profile: str                               # the profile these sizes belong to
    methods: tuple[str, ...] = recipe.METHODS  # compared methods (same budget each)
    seeds: tuple[int, ...] = (0, 1, 2)         # one run per method per seed → mean ± std
    r: int = 8                                 # adapter rank of the main comparison (seed's C14: r=8)
    sweep_methods: tuple[str, ...] = ("lora", "dora")  # rank sweep (DoRA's low-rank claim)
    sweep_ranks: tuple[int, ...] = (2, 8, 32)  # r=8 reuses the main runs of the first seed
    max_steps: int = 20                        # optimizer steps per run
    batch_size: int = 4                        # sequences per step (grad_accum 1)
    lr: float = 1e-3                           # adapters (recipe); full FT uses full_lr
    full_lr: float = 1e-4                      # full fine-tuning: every weight moves, 10× lower
    eval_n: int = 40                           # held-out test examples scored (greedy, exact match)
    train_examples: int | None = None          # first N training records (None: all 2000)
    max_new_tokens: int | None = None          # generation cap (None: longest reference + 8 tokens)
    task: str = "orders"                       # data/ task
    model: str | None = None                   # model of every run (None: the named profile's)
    device: str | None = None                  # cpu | cuda (None: the named profile's)
    compute_dtype: str | None = None           # bf16 | fp16 | fp32 (None: the named profile's)

    def __post_init__(self):
        bad = [m for m in (*self.methods, *self.sweep_methods) if m not in recipe.METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}: use {', '.join(recipe.METHODS)}")
        if not self.seeds or self.eval_n < 1 or self.max_steps < 1:
            raise ValueError("need at least one seed, eval_n ≥ 1 and max_steps ≥ 1")

    def hardware(self) -> settings.Profile:
        """The profile the runs use: the named one, with this plan's model, device and dtype."""
        p = settings.resolve(self.profile)
        return replace(p, model=self.model or p.model, device=self.device or p.device,
                       compute_dtype=self.compute_dtype or p.compute_dtype)

    def configs(self) -> list[recipe.TrainConfig]:
        """Every run: methods × seeds at rank r, then the sweep ranks ≠ r at the first seed."""
        out = [self.config(m, self.r, s) for s in self.seeds for m in self.methods]
        out += [self.config(m, k, self.seeds[0]) for k in self.sweep_ranks if k != self.r
                for m in self.sweep_methods]
        return out

    def config(self, method: str, r: int, seed: int) -> recipe.TrainConfig:
        """One run's config: the profile's recipe with this plan's budget (α = 2r)."""
        return recipe.recipe(self.hardware(), method=method, r=r, alpha=2 * r, seed=seed,
                             max_steps=self.max_steps, batch_size=self.batch_size, grad_accum=1, task=self.task,
                             lr=self.full_lr if method == "full" else self.lr,
                             train_examples=self.train_examples, save_steps=0)


def plan(profile: settings.Profile | None = None) -> Plan:
    """The per-profile plan (default: the session's profile): smoke proves the code runs; cpu gives
    ≥3 seeds in ≤ 20 min on 2 cores. The profile's model, device and compute dtype go into the plan."""
    p = profile or settings.profile()
    kw = p.pick(smoke=dict(seeds=(0,), sweep_ranks=(8,), max_steps=1, batch_size=2, eval_n=2,
                           train_examples=8, max_new_tokens=8),
                cpu=dict(seeds=(0, 1, 2), max_steps=20, batch_size=4, eval_n=40),
                gpu=dict(seeds=(0, 1, 2), max_steps=200, batch_size=16, lr=2e-4, full_lr=2e-5, eval_n=200))
    return Plan(profile=p.name, model=p.model, device=p.device, compute_dtype=p.compute_dtype, **kw)


class MemoryMeter(TrainerCallback):
    """Counts the training memory terms of `model` while Trainer runs (bytes), with peftlab.memory.

    activations: what autograd holds for backward when backward starts (memory.SavedTensorMeter),
    the largest step kept; optimizer: the optimizer's state tensors after the last step;
    gradients: one per trainable parameter, its dtype; weights: the model's footprint.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.activations = self.optimizer = 0
        self._saved: memory.SavedTensorMeter | None = None

    def on_step_begin(self, args, state, control, **kw):
        self._saved = memory.SavedTensorMeter(exclude=self.model).__enter__()

    def on_step_end(self, args, state, control, **kw):
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self.activations = max(self.activations, self._saved.bytes)
            self._saved = None

    def on_train_end(self, args, state, control, optimizer=None, **kw):
        if optimizer is not None:
            self.optimizer = memory.optimizer_bytes(optimizer)

    def breakdown(self) -> dict[str, int]:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return {"weights": memory.footprint_bytes(self.model), "gradients": memory.storage_bytes(trainable),
                "optimizer": self.optimizer, "activations": self.activations}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_one(cfg: recipe.TrainConfig, eval_n: int, workdir: str | Path, max_new_tokens: int | None = None) -> dict:
    """Build, train, evaluate and save one model; returns a flat dict of its numbers."""
    cuda = cfg.device == "cuda"
    t0, c0 = time.perf_counter(), time.process_time()
    memory.reset_peak_rss()
    rss0 = memory.rss_bytes()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, tok = train.build_model(cfg)
    n_train, n_total = train.trainable_params(model)
    meter = MemoryMeter(model)
    res = train.train(cfg, model, tok, Path(workdir) / "trainer", callbacks=[meter], disable_tqdm=True)
    mem = meter.breakdown()
    peak_rss = memory.rss_bytes(peak=True) - rss0
    peak_cuda = torch.cuda.max_memory_allocated() if cuda else None
    test = data.load_split(cfg.task, "test").select(range(eval_n))
    t1 = time.perf_counter()
    ev = evaluate.evaluate(model, tok, test, cfg.task, max_new_tokens=max_new_tokens)
    eval_s = time.perf_counter() - t1
    saved = Path(workdir) / "adapter"
    adapters.save_adapter(model, saved, log=None)  # full FT: the whole model is the "adapter"
    disk = _dir_bytes(saved)
    row = dict(method=cfg.method, r=cfg.r, seed=cfg.seed, lr=cfg.lr, steps=res.global_step,
               trainable=n_train, total=n_total, adapter_bytes=disk, **{f"mem_{k}": v for k, v in mem.items()},
               mem_counted=sum(mem.values()), peak_rss_delta=peak_rss, peak_cuda=peak_cuda,
               median_step_s=res.median_step_s, train_wall_s=res.wall_s, eval_s=eval_s,
               first_loss=res.losses[0], final_loss=statistics.fmean(res.losses[-3:]),
               exact_match=ev.exact_match, field_scores=ev.field_scores, eval_n=ev.n,
               example=dict(input=ev.inputs[0], prediction=ev.predictions[0], reference=ev.references[0]))
    del model
    row["wall_s"] = time.perf_counter() - t0
    row["cpu_s"] = time.process_time() - c0  # CPU seconds of this process: less sensitive to a busy machine
    return row


def run_all(p: Plan, out_path: str | Path, log: Callable[[str], None] = print,
            shard: tuple[int, int] = (0, 1), runs: list[int] | None = None) -> dict:
    """Run the whole plan; the JSON at out_path is rewritten after every run (a crash keeps the rest).

    shard=(i, n) runs only every n-th run starting at i (n processes share a busy machine's
    cores); runs=[k, ...] runs only those positions of p.configs(); `merge` joins the files.
    """
    i0, n = shard
    if not 0 <= i0 < n:
        raise ValueError(f"shard must be (i, n) with 0 ≤ i < n, got {shard}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prof = p.hardware()
    meta = dict(plan={**asdict(p)}, profile=prof.name, device=prof.device, compute_dtype=prof.compute_dtype,
                torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
                machine=platform.processor() or platform.machine(), load_avg_start=_loadavg(),
                started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                gpu=torch.cuda.get_device_name(0) if prof.device == "cuda" else None, shard=[i0, n])
    results = dict(meta=meta, runs=[])
    cfgs = [p.configs()[k] for k in runs] if runs is not None else p.configs()[i0::n]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="showdown-") as tmp:
        for i, cfg in enumerate(cfgs, 1):
            row = run_one(cfg, p.eval_n, Path(tmp) / f"run{i}", p.max_new_tokens)
            results["runs"].append(row)
            meta.update(wall_s=time.perf_counter() - t0, load_avg_end=_loadavg())
            out_path.write_text(json.dumps(results, indent=1))
            log(f"[{i}/{len(cfgs)}] {cfg.method:5s} r={cfg.r:<2d} seed={cfg.seed}  "
                f"EM {row['exact_match']:.2f}  {row['median_step_s']:.2f} s/step  "
                f"mem {row['mem_counted'] / 2**20:.0f} MiB  run {row['wall_s']:.0f} s")
    return results


def _plan_order(plan: dict) -> Callable[[dict], tuple]:
    """Sort key putting runs in Plan.configs() order (seeds × methods at r, then the sweep)."""
    p = {f.name: f.default for f in dataclasses.fields(Plan) if f.default is not dataclasses.MISSING} | plan

    def pos(seq, x) -> int:
        return list(seq).index(x) if x in seq else len(seq)

    def key(run: dict) -> tuple:
        if run["r"] == p["r"]:
            return (0, pos(p["seeds"], run["seed"]), pos(p["methods"], run["method"]))
        return (1, pos(p["sweep_ranks"], run["r"]), pos(p["sweep_methods"], run["method"]))
    return key


def merge(parts: list[str | Path], out_path: str | Path) -> dict:
    """Join shard files of one plan into one results file (meta of the first; wall = the longest)."""
    res = [load(x) for x in parts]
    if len({json.dumps(r["meta"]["plan"], sort_keys=True) for r in res}) != 1:
        raise ValueError("the shards were run with different plans: rerun them with one profile")
    meta = dict(res[0]["meta"], shard=None, processes=len(res), wall_s=max(r["meta"]["wall_s"] for r in res),
                load_avg_end=res[-1]["meta"].get("load_avg_end"))
    seen, runs = set(), []
    for run in (run for r in res for run in r["runs"]):
        key = (run["method"], run["r"], run["seed"])
        runs += [] if key in seen else [run]   # a run measured twice (overlapping shards) counts once
        seen.add(key)
    runs.sort(key=_plan_order(res[0]["meta"]["plan"]))
    out = dict(meta=meta, runs=runs)
    Path(out_path).write_text(json.dumps(out, indent=1))
    return out


def missing(results: dict, p: Plan) -> list[tuple[str, int, int]]:
    """(method, r, seed) of the plan's runs that the results do not hold (an unfinished measurement)."""
    have = {(x["method"], x["r"], x["seed"]) for x in results["runs"]}
    return [(c.method, c.r, c.seed) for c in p.configs() if (c.method, c.r, c.seed) not in have]


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def load(path: str | Path) -> dict:
    """A results file written by run_all; ValueError with the command to make it if missing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} not found: run `python benchmarks/showdown.py` to measure it")
    return json.loads(path.read_text())


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summary(results: dict, r: int | None = None) -> list[dict]:
    """One row per (method, r): means and stds over seeds; runs at rank r only if r is given."""
    groups: dict[tuple, list[dict]] = {}
    for run in results["runs"]:
        if r is None or run["r"] == r or run["method"] == "full":
            groups.setdefault((run["method"], run["r"] if run["method"] != "full" else 0), []).append(run)
    rows = []
    for (method, rank), runs in groups.items():
        em, em_sd = _ms([x["exact_match"] for x in runs])
        fields = sorted({k for x in runs for k in x["field_scores"]})
        rows.append(dict(method=method, r=rank, n_seeds=len(runs), exact_match=em, exact_match_std=em_sd,
                         field_mean=_ms([statistics.fmean(x["field_scores"].values()) for x in runs])[0],
                         fields={k: _ms([x["field_scores"].get(k, 0.0) for x in runs])[0] for k in fields},
                         trainable=runs[0]["trainable"], total=runs[0]["total"],
                         adapter_bytes=statistics.median(x["adapter_bytes"] for x in runs),
                         mem_counted=statistics.median(x["mem_counted"] for x in runs),
                         **{f"mem_{k}": statistics.median(x[f"mem_{k}"] for x in runs)
                            for k in ("weights", "gradients", "optimizer", "activations")},
                         peak_rss_delta=statistics.median(x["peak_rss_delta"] for x in runs),
                         peak_cuda=runs[0]["peak_cuda"] and statistics.median(x["peak_cuda"] for x in runs),
                         median_step_s=statistics.median(x["median_step_s"] for x in runs),
                         final_loss=_ms([x["final_loss"] for x in runs])[0]))
    return rows
