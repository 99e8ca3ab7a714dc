"""Notebook 06's exercises: from runs to a table row, and from table rows to a verdict.

    mean ± std over seeds at one rank (sample std, n − 1)        a gap counts only beyond the seeds' spread
    spread = √((std_a² + std_b²) / 2)                            C14: DoRA > LoRA by 5–15 %, same parameter count

The references are the rules of `peftlab.showdown.summary` and `peftlab.claims.verdict` (C14)
(tests/test_exercises.py checks that they agree on the committed results file).
Solutions: notebooks/solutions/06_showdown.py.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from ._verdict import call, cases, exercise, report

NOTEBOOK = "06_showdown"
VERDICTS = ("holds", "holds with a nuance", "does not hold")


def _runs() -> list[dict]:
    """A small results table: 3 seeds of LoRA and DoRA at r = 8, and a rank sweep at r = 2 and 32."""
    em = {("lora", 8): [0.65, 0.60, 0.60], ("dora", 8): [0.725, 0.65, 0.60],
          ("lora", 2): [0.0], ("dora", 2): [0.05], ("lora", 32): [0.90], ("dora", 32): [0.925]}
    return [dict(method=m, r=r, seed=s, exact_match=x) for (m, r), xs in em.items() for s, x in enumerate(xs)]


def summarize(runs: list[dict], r: int, std=statistics.stdev, any_rank: bool = False) -> dict:
    """{method: (mean, std)} of exact match over seeds at rank r (and the usual slips, for hints)."""
    groups: dict[str, list[float]] = {}
    for run in runs:
        if any_rank or run["r"] == r:
            groups.setdefault(run["method"], []).append(run["exact_match"])
    return {m: (statistics.fmean(xs), std(xs) if len(xs) > 1 else 0.0) for m, xs in groups.items()}


@exercise(NOTEBOOK, "my_summary")
def check_summary(fn: Callable[[list, int], dict]) -> bool:
    """Exercise 1: `fn(runs, r)` = {method: (mean, std)} of exact match over the seeds at rank r."""
    runs = _runs()
    got, why = call(fn, ([dict(x) for x in runs], 8), "each run is a dict with method, r, seed, exact_match")
    if why:
        return report(f"fn(runs, 8) {why}", "")
    if not isinstance(got, dict):
        return report(f"return a dict {{method: (mean, std)}}, got {type(got).__name__}", "")
    ref = summarize(runs, 8)
    try:
        flat = {m: tuple(float(v) for v in got[m]) for m in ref}
    except (KeyError, TypeError, ValueError) as err:
        return report(f"expected a (mean, std) pair for each of {sorted(ref)} ({type(err).__name__}: {err})", "")
    keys = [(m, i) for m in sorted(ref) for i in (0, 1)]
    labels = [f"{m} {'mean' if i == 0 else 'std'}" for m, i in keys]
    slips = {"you mixed in the rank sweep's runs (r = 2 and 32): keep only runs with run['r'] == r":
             summarize(runs, 8, any_rank=True),
             "that is the population std (n): over a few seeds use the sample std (n − 1), statistics.stdev, "
             "as showdown.summary does": summarize(runs, 8, std=statistics.pstdev),
             "the std is missing: statistics.stdev of the seeds' scores": summarize(runs, 8, std=lambda xs: 0.0)}
    why = cases([flat[m][i] for m, i in keys], [ref[m][i] for m, i in keys], labels,
                {h: [s[m][i] for m, i in keys] for h, s in slips.items()}, rtol=1e-6)
    return report(why, "mean ± sample std over the seeds at r = 8 (= showdown.summary)")


def c14_verdict(lora: dict, dora: dict, spread_rule: str = "pooled", relative: bool = True,
                count_params: bool = True, upper: bool = True) -> str:
    """C14 "DoRA beats LoRA by 5–15 % with the same parameter count" from two summary rows (and slips)."""
    d = dora["exact_match"] - lora["exact_match"]
    sa, sb = dora["exact_match_std"], lora["exact_match_std"]
    sd = {"pooled": math.sqrt((sa ** 2 + sb ** 2) / 2), "sum": sa + sb, "none": 0.0}[spread_rule]
    rel = d / max(lora["exact_match"], 1e-9) if relative else d
    same_count = dora["trainable"] == lora["trainable"] or not count_params
    if d > sd and 0.05 <= rel and (rel <= 0.15 or not upper) and same_count:
        return "holds"
    return "holds with a nuance" if d > sd else "does not hold"


def _row(em: float, sd: float, trainable: int) -> dict:
    return dict(exact_match=em, exact_match_std=sd, trainable=trainable)


# (what the table shows, LoRA row, DoRA row): each scenario separates one usual slip from the rule
_C14 = [("the committed cpu table", _row(0.617, 0.029, 1_700_000), _row(0.658, 0.063, 1_855_520)),
        ("+10 %, beyond the spread, same count", _row(0.60, 0.02, 1_000), _row(0.66, 0.02, 1_000)),
        ("+10 %, beyond the spread, DoRA trains more", _row(0.60, 0.02, 1_000), _row(0.66, 0.02, 1_100)),
        ("+50 %, beyond the spread, same count", _row(0.40, 0.01, 1_000), _row(0.60, 0.01, 1_000)),
        ("+4 points = +8 %, no spread, same count", _row(0.50, 0.0, 1_000), _row(0.54, 0.0, 1_000)),
        ("+10 %, beyond the pooled spread, inside the summed stds", _row(0.60, 0.03, 1_000), _row(0.66, 0.04, 1_000)),
        ("DoRA lower", _row(0.70, 0.02, 1_000), _row(0.60, 0.02, 1_000))]


@exercise(NOTEBOOK, "my_c14_verdict")
def check_c14_verdict(fn: Callable[[dict, dict], str]) -> bool:
    """Exercise 2: `fn(lora, dora)` = C14's verdict from two summary rows: "holds", "holds with a nuance"
    or "does not hold"."""
    got = []
    for label, lo, do in _C14:
        out, why = call(fn, (dict(lo), dict(do)), "rows have exact_match, exact_match_std and trainable")
        if why:
            return report(f"{label}: fn {why}", "")
        if not isinstance(out, str) or out.strip().lower() not in VERDICTS:
            return report(f"{label}: return one of {VERDICTS}, got {out!r}", "")
        got.append(out.strip().lower())
    ref = [c14_verdict(lo, do) for _, lo, do in _C14]
    slips = {
        "a gap inside the seeds' spread is noise: DoRA must beat LoRA by more than √((std_L² + std_D²)/2)":
            dict(spread_rule="none"),
        "the seeds' spread is the pooled std √((std_L² + std_D²)/2), not the sum of the two stds":
            dict(spread_rule="sum"),
        "'5–15 %' is relative to LoRA's score: (EM_D − EM_L) / EM_L, not the difference in points":
            dict(relative=False),
        "'with the same parameter count' is part of the claim: DoRA's extra magnitudes make it a nuance":
            dict(count_params=False),
        "'5–15 %' has an upper end: a far larger gain holds only with a nuance": dict(upper=False),
    }
    why = cases(got, ref, [label for label, _, _ in _C14],
                {h: [c14_verdict(lo, do, **kw) for _, lo, do in _C14] for h, kw in slips.items()})
    return report(why, "the C14 verdict for every table (the rule of claims.verdict('C14', ...))")
