"""Training on transformers `Trainer`: build the model a `TrainConfig` describes, train it, time it.

    LoRA   W' = W + (α/r)·B·A            (Hu et al. 2021, arXiv:2106.09685)
    QLoRA  W' = dequant_NF4(W) + (α/r)·B·A, base frozen in 4 bits (Dettmers et al. 2023, 2305.14314)
    DoRA   W' = m · (W + (α/r)·B·A) / ‖W + (α/r)·B·A‖_row   (Liu et al. 2024, arXiv:2402.09353)

Everything a run depends on is in its config (`recipe.recipe(profile)` fills the profile's model,
device and compute dtype); nothing here reads the session profile. Evaluation lives in `evaluate`,
adapters and checkpoints on disk in `adapters`.

Public API (notebooks 01, 03, 04, 06 and the benchmarks call these):

    build_model(cfg) -> (model, tokenizer)           dense or 4-bit base, PEFT-wrapped unless "full"
    train(cfg, model, tok, output_dir, *, callbacks=(), resume=False, train_records=None,
          disable_tqdm=None) -> TrainResult           resume=True continues from the last checkpoint
    trainable_params(model) -> (trainable, total)
    step_time(model, batch, *, dtype=torch.float32, repeats=3) -> float   median s of fwd+bwd
    set_4bit_compute_dtype(model, dtype) -> int      pin the matmul dtype of every Linear4bit
    StepTimer, LossCallback(fn), InterruptAt(step): TrainerCallbacks

TrainResult(losses, steps, step_times, median_step_s, wall_s, global_step, output_dir)
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import adapters, data, models, recipe, settings


def trainable_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their packed elements × 2."""
    train = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # two 4-bit values per byte
        total += n
        train += n if p.requires_grad else 0
    return train, total


def build_model(cfg: recipe.TrainConfig):
    """The model to train for `cfg` and its tokenizer.

    Loads cfg.model on cfg.device.
    full: dense fp32 master weights, all trainable (compute in cfg.dtype via autocast).
    lora/dora: dense base stored in the compute dtype, frozen; fp32 adapters (PEFT default).
    qlora/qdora: 4-bit base (load_model(bits=4), guarded), prepare_model_for_kbit_training, adapters.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    settings.seed_everything(cfg.seed)  # adapter init (lora_A kaiming) is reproducible
    tok = models.load_tokenizer(cfg.model)
    if cfg.method == "full":
        model = models.load_model(cfg.model, dtype=torch.float32, device=cfg.device)
        for p in model.parameters():
            p.requires_grad_(True)
        models.set_checkpointing(model, cfg.gradient_checkpointing)
        return model, tok
    if cfg.quantized:
        model = models.load_model(cfg.model, bits=4, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                                  dtype=cfg.dtype, compute_dtype=cfg.dtype, device=cfg.device)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        models.set_checkpointing(model, cfg.gradient_checkpointing)
        set_4bit_compute_dtype(model, cfg.dtype)  # prepare_* made the hidden states fp32
    else:
        model = models.load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
        models.set_checkpointing(model, cfg.gradient_checkpointing)
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="CAUSAL_LM",
                      target_modules=recipe.lora_targets(cfg), use_dora=cfg.method in ("dora", "qdora"))
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model. Please check ..."
        if "not found in the base model" not in str(err):
            raise
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"target_modules {','.join(cfg.target_modules)} match no layer of {cfg.model}: its "
                         f"linear layers are {', '.join(names)} (or use 'all-linear')") from None
    models.guard_4bit(model)  # idempotent; keeps the bitsandbytes CPU pitfall away
    return model, tok


def set_4bit_compute_dtype(model: nn.Module, dtype: torch.dtype) -> int:
    """Pin the matmul dtype of every Linear4bit; return how many were set.

    bitsandbytes otherwise adopts the dtype of the first input it sees, and after
    prepare_model_for_kbit_training (which upcasts norms and embeddings) that is fp32.
    """
    bnb = models.import_bitsandbytes()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.compute_dtype, m.compute_type_is_set = dtype, True
    return len(layers)


def step_time(model: nn.Module, batch: dict, *, dtype: torch.dtype = torch.float32,
              repeats: int = 3) -> float:
    """Median seconds of one forward + backward on `batch` with matmuls in `dtype`.

    bf16/fp16 use autocast (what Trainer's bf16=True/fp16=True does) and pin the 4-bit
    matmuls to the same dtype; one warm-up pass is not counted. Gradients are discarded.
    """
    if repeats < 1:
        raise ValueError("repeats must be ≥ 1")
    bnb = models.import_bitsandbytes()
    lin4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    old = [m.compute_dtype for m in lin4]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    was_training, times = model.training, []
    model.train()
    try:
        set_4bit_compute_dtype(model, dtype)
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(**batch).loss
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        for m, d in zip(lin4, old):
            m.compute_dtype = d
        model.train(was_training)
    return statistics.median(times[1:])


def matmul_time(dtype: torch.dtype, *, n: int = 512, repeats: int = 3, device: str = "cpu") -> float:
    """Median seconds of one n×n @ n×n matmul in `dtype` (one warm-up not counted).

    The cheap way to ask "does this hardware compute in this dtype natively?": without native bf16
    a CPU emulates it, and a whole bf16 training step there takes minutes (notebook 04 §5)."""
    if repeats < 1 or n < 1:
        raise ValueError("n and repeats must be ≥ 1")
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


# --- callbacks -------------------------------------------------------------------------------

class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (all its micro-batches), in seconds."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


class LossCallback(TrainerCallback):
    """Calls fn(steps, losses) after every logged loss: drive a live plot with it."""

    def __init__(self, fn: Callable[[list[int], list[float]], None]):
        self.fn, self.steps, self.losses = fn, [], []

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.steps.append(state.global_step)
            self.losses.append(float(logs["loss"]))
            self.fn(self.steps, self.losses)


class _LossBar(ProgressCallback):
    """Trainer's progress bar, with the latest loss as its postfix instead of printed dicts."""

    def on_log(self, args, state, control, logs=None, **kw):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)


class InterruptAt(TrainerCallback):
    """Raise KeyboardInterrupt after optimizer step `step` (and its checkpoint): simulates Stop."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kw):  # the next step is about to start
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"interrupted at step {self.step}")


class _RecordConfig(TrainerCallback):
    """Write the run's TrainConfig into every checkpoint (after Trainer wrote it), for resume checks."""

    def __init__(self, cfg: recipe.TrainConfig):
        self.cfg = cfg

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            adapters.record_config(ckpt, self.cfg)


# --- training --------------------------------------------------------------------------------

@dataclass
class TrainResult:
    losses: list[float]       # training loss per logged step
    steps: list[int]          # the optimizer step of each loss
    step_times: list[float]   # seconds per optimizer step (this call only)
    median_step_s: float      # median of step_times
    wall_s: float             # wall time of trainer.train() in this call
    global_step: int          # optimizer steps done, counting resumed ones
    output_dir: str           # where checkpoints were written


def train(cfg: recipe.TrainConfig, model: nn.Module, tok, output_dir: str | Path, *,
          callbacks: Sequence[TrainerCallback] = (), resume: bool = False,
          train_records: Sequence[dict] | None = None, disable_tqdm: bool | None = None) -> TrainResult:
    """Train `model` (from build_model(cfg)) on cfg.task's train split (or `train_records`) with
    transformers Trainer, on cfg.device with cfg.compute_dtype autocast (bf16/fp16 flags).

    train_records: your own records (a list of dicts or a Dataset, e.g. data.load_files(...)["train"]);
    required when cfg.task is None. They are checked first (data.check_records: the record, the
    field) and only their id/instruction/input/output are used, so extra fields of any type are fine.
    Every checkpoint gets the config it was trained with (adapters.CONFIG_FILE).
    resume=True continues from adapters.last_checkpoint(output_dir) (optimizer, scheduler, RNG
    and data position restored) and starts fresh when there is none; before anything runs,
    adapters.resume_point refuses an output_dir that is a checkpoint itself, earlier checkpoints
    that resume=False would overwrite, and a checkpoint that is damaged or from another config.
    KeyboardInterrupt propagates after the checkpoints written so far are on disk.
    """
    start = adapters.resume_point(output_dir, cfg, resume)
    if train_records is None:
        if cfg.task is None:
            raise ValueError("cfg.task is None (your own data): pass train.train(cfg, model, tok, output_dir, "
                             "train_records=splits['train']) with splits = data.load_files(train=...)")
        ds = data.load_split(cfg.task, "train")
    else:
        ds = train_records
    if cfg.train_examples:
        ds = ds.select(range(min(cfg.train_examples, ds.num_rows))) if hasattr(ds, "select") \
            else list(ds)[:cfg.train_examples]
    ds = data.tokenize(ds, tok, cfg.max_length)  # checks every record; a list keeps only the required fields
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear", weight_decay=cfg.weight_decay, optim=cfg.optimizer, seed=cfg.seed,
        data_seed=cfg.seed, bf16=cfg.dtype == torch.bfloat16, fp16=cfg.dtype == torch.float16,
        use_cpu=cfg.device == "cpu", logging_steps=cfg.logging_steps, report_to="none",
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=disable_tqdm,
    )
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=data.Collator(tok.pad_token_id),
                      callbacks=[timer, _RecordConfig(cfg), *callbacks])
    # one progress bar with the loss on it instead of a printed dict per logged step
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not args.disable_tqdm:
        trainer.add_callback(_LossBar())
    model.train()
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=start)
    wall = time.perf_counter() - t0
    model.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return TrainResult(losses=[float(h["loss"]) for h in logs], steps=[h["step"] for h in logs],
                       step_times=timer.times, median_step_s=timer.median, wall_s=wall,
                       global_step=trainer.state.global_step, output_dir=str(output_dir))


if __name__ == "__main__":
    # `python -m peftlab.train --config FILE` is `peftlab train --config FILE`: the config-file
    # runner lives in peftlab.runconfig (which imports this module), so it is run by name here
    import runpy

    runpy.run_module("peftlab.runconfig", run_name="__main__", alter_sys=True)
