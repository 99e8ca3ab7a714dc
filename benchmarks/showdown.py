"""Rerun the whole showdown measurement (notebook 06) and write it to a JSON file.

    HF_HUB_OFFLINE=1 PEFTLAB_PROFILE=cpu .venv/bin/python benchmarks/showdown.py
        -> results/showdown_cpu.json  (5 methods x 3 seeds + LoRA/DoRA rank sweep; <= 20 min on 2 quiet cores)

The profile picks the sizes (peftlab.showdown.plan). Defaults: cpu/gpu write
results/showdown_<profile>.json (committed, so notebook 06 re-renders in seconds);
smoke writes artifacts/showdown_smoke.json (git-ignored). --out overrides the path.

--jobs 2 (what `make bench-showdown` uses) splits the runs over 2 processes of 1 thread each, balanced
by expected cost, and joins their files: small matmuls and token-by-token decoding use 2 cores better
as 2 processes than as 2 threads of one. By hand, n processes can split the runs and be joined:
    benchmarks/showdown.py --shard 0/2 &  benchmarks/showdown.py --shard 1/2;  benchmarks/showdown.py --merge
(each shard writes <out>.part<i>.json; --merge joins every part file of the profile into <out>).
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_out(profile: str) -> Path:
    return ROOT / ("artifacts" if profile == "smoke" else "results") / f"showdown_{profile}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None,
                    help="run profile (default: $PEFTLAB_PROFILE, else cpu/gpu by hardware)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: see above)")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (default 0/1: all)")
    ap.add_argument("--runs", default=None, help="comma-separated positions in the plan's run list (a shard by hand)")
    ap.add_argument("--merge", action="store_true", help="join the <out>.part*.json shard files into <out>")
    ap.add_argument("--jobs", type=int, default=1, help="processes sharing the cores (each gets cores/jobs threads)")
    args = ap.parse_args(argv)
    i, n = (int(x) for x in args.shard.split("/"))
    if args.profile:
        os.environ["PEFTLAB_PROFILE"] = args.profile
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    from peftlab import settings, showdown

    hf_logging.set_verbosity_error()
    prof = settings.profile()
    out = args.out or default_out(prof.name)
    plan = showdown.plan(prof)
    if args.merge:
        parts = sorted(out.parent.glob(out.stem + ".part*.json"))
        res = showdown.merge(parts, out)
        print(f"merged {len(parts)} shard(s), {len(res['runs'])} runs -> {out}")
        _report(showdown, res, plan)
        return 0
    if args.jobs > 1:
        return _parallel(args.jobs, prof.name, out, plan, showdown)
    runs = [int(k) for k in args.runs.split(",")] if args.runs else None
    if runs is not None:
        out = out.with_name(f"{out.stem}.part-runs{'-'.join(map(str, runs))}.json")
    elif n > 1:
        out = out.with_name(f"{out.stem}.part{i}.json")
    print(f"profile {prof.name} ({prof.device}, {prof.compute_dtype}): {len(plan.configs())} runs -> {out}",
          flush=True)
    t0 = time.perf_counter()
    res = showdown.run_all(plan, out, log=lambda s: print(s, flush=True), shard=(i, n), runs=runs)
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote {out}")
    _report(showdown, res, plan)
    return 0


# relative cost of one run (step time and decoding), for balancing the processes
COST = {"full": 1.0, "lora": 1.0, "qlora": 1.15, "dora": 1.7, "qdora": 2.0}


def _parallel(jobs: int, profile: str, out: Path, plan, showdown) -> int:
    import subprocess
    import sys

    loads, groups = [0.0] * jobs, [[] for _ in range(jobs)]
    cfgs = plan.configs()
    for k in sorted(range(len(cfgs)), key=lambda k: -COST.get(cfgs[k].method, 1.0)):  # longest first
        j = loads.index(min(loads))
        groups[j].append(k)
        loads[j] += COST.get(cfgs[k].method, 1.0)
    for stale in out.parent.glob(out.stem + ".part*.json"):
        stale.unlink()
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--profile", profile, "--out", str(out),
                               "--runs", ",".join(map(str, sorted(g)))], env=env) for g in groups if g]
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"a process failed (exit codes {codes}); the finished runs are in {out.stem}.part*.json")
        return 1
    parts = sorted(out.parent.glob(out.stem + ".part*.json"))
    res = showdown.merge(parts, out)
    for part in parts:
        part.unlink()
    res["meta"]["wall_s"] = time.perf_counter() - t0
    out.write_text(json.dumps(res, indent=1))
    print(f"{len(procs)} processes, {len(res['runs'])} runs in {res['meta']['wall_s']:.0f} s -> {out}")
    _report(showdown, res, plan)
    return 0


def _report(showdown, res: dict, plan) -> None:
    for row in showdown.summary(res, r=plan.r):
        print(f"  {row['method']:5s} EM {row['exact_match']:.2f} ± {row['exact_match_std']:.2f}  "
              f"{row['median_step_s']:.2f} s/step  {row['mem_counted'] / 2**20:.0f} MiB counted")


if __name__ == "__main__":
    raise SystemExit(main())
