"""Benchmark: notebook 04's QLoRA recipe, measured end to end in one run (issue 3's must-show).

    PEFTLAB_PROFILE=cpu HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_qlora.py [--seed-recipe] [--json out.json]

(use all cores: do not set OMP_NUM_THREADS. --eval-n 100 halves the evaluation time.)

One seed, one process, one machine:
  1. the 4-bit base model's exact match on the test split, evaluated BEFORE training (as the
     notebook does: the bitsandbytes CPU pitfall must not bite);
  2. QLoRA training wall time (Trainer.train only) and median step time; exact match and
     per-field scores on the test split after training;
  3. dense LoRA with the same config, seed and data: its loss curve against QLoRA's (final
     training loss = mean of the last 5 logged losses; the claim is "within 10%"), and both
     models' held-out loss per answer token on the validation split (less noisy than 5 batches);
  4. median forward+backward time of one training batch with fp32 vs bf16 compute (4-bit);
  5. with --seed-recipe: the seed's defaults (C16) trained on as many examples, for comparison.
Passing thresholds are printed as PASS/FAIL lines; the exit code is 0 either way (a benchmark
reports, it does not gate).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from peftlab import data, evaluate, recipe, settings, train


def tail_mean(xs: list[float], k: int = 5) -> float:
    return statistics.fmean(xs[-k:])


def run_eval(model, tok, recs, task):
    t0 = time.perf_counter()
    ev = evaluate.evaluate(model, tok, recs, task)
    return ev, time.perf_counter() - t0


def fields(ev) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in ev.field_scores.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's max_steps")
    ap.add_argument("--eval-n", type=int, default=200, help="test examples to score (all: 200)")
    ap.add_argument("--skip-lora", action="store_true", help="skip the dense-LoRA loss comparison")
    ap.add_argument("--seed-recipe", action="store_true", help="also train the seed's defaults (C16)")
    ap.add_argument("--json", default=None, help="write all numbers to this JSON file")
    ap.add_argument("--out", default="runs/bench_qlora", help="scratch folder for the Trainer")
    args = ap.parse_args()

    prof = settings.profile()
    cfg = recipe.recipe(prof, **({"max_steps": args.steps} if args.steps else {}))
    test = list(data.load_split(cfg.task, "test"))[: args.eval_n]
    val = list(data.load_split(cfg.task, "validation"))[: args.eval_n]
    print(f"profile={prof.name} device={prof.device} compute={prof.compute_dtype} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    print("recipe:", {k: v for k, v in recipe.config_dict(cfg).items()
                      if v != recipe.config_dict(recipe.seed_defaults(prof))[k]}, "(differences from the seed)")
    out: dict = {"profile": prof.name, "config": recipe.config_dict(cfg)}

    # 1-2: QLoRA, evaluated before and after training, on the same model object
    model, tok = train.build_model(cfg)
    before, t_ev = run_eval(model, tok, test, cfg.task)
    print(f"[base 4-bit] exact match {before.exact_match:.3f} on {before.n} test examples "
          f"({t_ev:.0f} s) | {fields(before)}")
    q = train.train(cfg, model, tok, f"{args.out}/qlora", disable_tqdm=True)
    after, t_ev = run_eval(model, tok, test, cfg.task)
    print(f"[qlora] {q.global_step} steps, train wall {q.wall_s:.1f} s, median step {q.median_step_s:.2f} s, "
          f"final loss {tail_mean(q.losses):.4f}")
    print(f"[qlora] exact match {after.exact_match:.3f} ({t_ev:.0f} s to evaluate) | {fields(after)}")
    vq = evaluate.answer_loss(model, tok, val)
    print(f"[qlora] held-out loss {vq:.4f} per answer token ({len(val)} validation examples)")
    out.update(base_em=before.exact_match, qlora_em=after.exact_match, qlora_fields=after.field_scores,
               qlora_val_loss=vq,
               qlora_wall_s=q.wall_s, qlora_median_step_s=q.median_step_s, qlora_losses=q.losses)

    # 4: fp32 vs bf16 compute, same model and batch
    batch = data.Collator(tok.pad_token_id)([data.encode(tok, r) for r in
                                             list(data.load_split(cfg.task, "train"))[: cfg.batch_size]])
    t32 = train.step_time(model, batch, dtype=torch.float32)
    t16 = train.step_time(model, batch, dtype=torch.bfloat16)
    print(f"[precision] fwd+bwd median: fp32 {t32:.2f} s, bf16 {t16:.2f} s → bf16/fp32 = {t16 / t32:.2f}× "
          f"({'bf16' if t16 < t32 else 'fp32'} is faster here)")
    out.update(step_fp32_s=t32, step_bf16_s=t16)
    del model

    # 3: dense LoRA, same everything
    if not args.skip_lora:
        lcfg = replace(cfg, method="lora")
        model, tok = train.build_model(lcfg)
        lo = train.train(lcfg, model, tok, f"{args.out}/lora", disable_tqdm=True)
        fq, fl = tail_mean(q.losses), tail_mean(lo.losses)
        rel = abs(fq - fl) / fl
        vl = evaluate.answer_loss(model, tok, val)
        vrel = abs(vq - vl) / vl
        print(f"[lora] train wall {lo.wall_s:.1f} s, median step {lo.median_step_s:.2f} s, final loss {fl:.4f}, "
              f"held-out loss {vl:.4f}")
        print("[curves] step: qlora / lora training loss")
        for i in range(0, len(q.losses), max(1, len(q.losses) // 8)):
            print(f"  {q.steps[i]:>4}: {q.losses[i]:.4f} / {lo.losses[i]:.4f}")
        print(f"[qlora vs lora] final training loss {fq:.4f} vs {fl:.4f}: relative difference {rel:.1%}")
        print(f"[qlora vs lora] held-out loss {vq:.4f} vs {vl:.4f}: relative difference {vrel:.1%}")
        out.update(lora_losses=lo.losses, lora_wall_s=lo.wall_s, final_loss_rel_diff=rel,
                   lora_val_loss=vl, val_loss_rel_diff=vrel)
        del model

    # 5: the seed's defaults on the same number of training examples
    if args.seed_recipe:
        per_step = cfg.batch_size * cfg.grad_accum
        scfg = recipe.seed_defaults(prof, seed=cfg.seed, compute_dtype=cfg.compute_dtype,
                                   max_steps=max(1, cfg.max_steps * per_step // 16))
        model, tok = train.build_model(scfg)
        s = train.train(scfg, model, tok, f"{args.out}/seed", disable_tqdm=True)
        sev, _ = run_eval(model, tok, test, scfg.task)
        print(f"[seed recipe] {s.global_step} steps × 16 seqs, train wall {s.wall_s:.1f} s, "
              f"exact match {sev.exact_match:.3f} | {fields(sev)}")
        out.update(seed_em=sev.exact_match, seed_wall_s=s.wall_s, seed_fields=sev.field_scores)

    print("---")
    checks = [("base exact match ≤ 10%", before.exact_match <= 0.10),
              ("QLoRA exact match ≥ 90%", after.exact_match >= 0.90),
              ("QLoRA training wall time ≤ 300 s", q.wall_s <= 300)]
    if "final_loss_rel_diff" in out:
        checks.append(("QLoRA final training loss within 10% of dense LoRA", out["final_loss_rel_diff"] <= 0.10))
        checks.append(("QLoRA held-out loss within 10% of dense LoRA", out["val_loss_rel_diff"] <= 0.10))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
