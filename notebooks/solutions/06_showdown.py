"""Solutions to notebook 06's exercises (a table row from runs, C14's verdict from two rows)."""
import math
import statistics


def my_summary(runs, r):
    scores = {}
    for run in runs:
        if run["r"] == r:
            scores.setdefault(run["method"], []).append(run["exact_match"])
    return {m: (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) for m, xs in scores.items()}


def my_c14_verdict(lora, dora):
    d = dora["exact_match"] - lora["exact_match"]
    spread = math.sqrt((lora["exact_match_std"] ** 2 + dora["exact_match_std"] ** 2) / 2)
    rel = d / lora["exact_match"]
    if d > spread and 0.05 <= rel <= 0.15 and dora["trainable"] == lora["trainable"]:
        return "holds"
    return "holds with a nuance" if d > spread else "does not hold"
