"""Benchmark: greedy generation of N test records by the untrained 4-bit base, with and without
the answer-end stop (`evaluate.generate(task=...)` vs `task=None`), timed in one run.

    PEFTLAB_PROFILE=cpu HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate_stop.py [--n 32] [--repeats 3]

The model is what notebook 04 scores before training: `train.build_model(recipe.recipe())`
(4-bit base, adapters with B = 0). `max_new_tokens` is what `evaluate.evaluate` uses (longest
reference + 8). The two variants alternate within each repeat, so drift on a busy machine hits
both; the report is the median time of each and their ratio, plus the characters generated per
answer and a check that every stopped answer is a prefix of the unstopped one.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from peftlab import data, evaluate, recipe, settings, train


def timed(model, tok, recs, task, max_new_tokens, batch_size) -> tuple[float, float, list[str]]:
    """(wall s, this process's CPU s, answers): CPU time is what a busy machine inflates least."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = evaluate.generate(model, tok, recs, task=task, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="test records to generate (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each variant (median)")
    ap.add_argument("--batch-size", type=int, default=32, help="records per generate call (evaluate's default)")
    ap.add_argument("--task", choices=data.TASKS, default="orders")
    args = ap.parse_args(argv)

    prof = settings.profile()
    cfg = recipe.recipe(prof, task=args.task)
    model, tok = train.build_model(cfg)
    recs = list(data.load_split(args.task, "test"))[: args.n]
    max_new = max(len(tok(r["output"], add_special_tokens=False)["input_ids"]) for r in recs) + 8
    print(f"profile={prof.name} device={prof.device} compute={prof.compute_dtype} threads={torch.get_num_threads()} "
          f"| {cfg.method} base, untrained | {len(recs)} '{args.task}' records, batch {args.batch_size}, "
          f"max_new_tokens {max_new}")
    times: dict[str, list[float]] = {"stop": [], "no stop": []}
    cpu: dict[str, list[float]] = {"stop": [], "no stop": []}
    outs: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, task in (("stop", args.task), ("no stop", None)):
            t, c, outs[name] = timed(model, tok, recs, task, max_new, args.batch_size)
            times[name].append(t)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    chars = {k: statistics.fmean(len(x) for x in v) for k, v in outs.items()}
    prefix = sum(b.startswith(a) for a, b in zip(outs["stop"], outs["no stop"]))
    for name in times:
        print(f"{name:8s} median {med[name]:.2f} s over {args.repeats} repeat(s)  "
              f"({', '.join(f'{t:.2f}' for t in times[name])});  {chars[name]:.0f} characters per answer")
    print(f"CPU time: stop median {med_cpu['stop']:.2f} s, no stop {med_cpu['no stop']:.2f} s "
          f"= {med_cpu['stop'] / med_cpu['no stop']:.2f}x")
    print(f"stop / no stop = {med['stop'] / med['no stop']:.2f}x the time; "
          f"{prefix}/{len(recs)} stopped answers are a prefix of the unstopped ones")
    print("a stopped answer:  ", repr(outs["stop"][0][:160]))
    print("the same, unstopped:", repr(outs["no stop"][0][:160]))


if __name__ == "__main__":
    main()
