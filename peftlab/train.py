"""The fine-tuning recipe on transformers `Trainer`: full, LoRA, QLoRA, DoRA, QDoRA; evaluation.

    LoRA   W' = W + (α/r)·B·A            (Hu et al. 2021, arXiv:2106.09685)
    QLoRA  W' = dequant_NF4(W) + (α/r)·B·A, base frozen in 4 bits (Dettmers et al. 2023, 2305.14314)
    DoRA   W' = m · (W + (α/r)·B·A) / ‖W + (α/r)·B·A‖_row   (Liu et al. 2024, arXiv:2402.09353)

Public API (notebooks 03, 04, 06 and the benchmark call these):

    METHODS = ("full", "lora", "qlora", "dora", "qdora"); ATTENTION, ALL_LINEAR (module-name tuples)
    TrainConfig(method="qlora", task="orders", r=16, alpha=32, dropout=0.05, target_modules=ATTENTION,
                lr=2e-4, batch_size=4, grad_accum=4, max_steps=100, ...)     frozen; see fields
    seed_defaults(**overrides) -> TrainConfig        the seed article's recipe (claim C16)
    recipe(profile=None, **overrides) -> TrainConfig this kit's per-profile recipe
    build_model(cfg) -> (model, tokenizer)           dense or 4-bit base, PEFT-wrapped unless "full"
    train(cfg, model, tok, output_dir, *, callbacks=(), resume=False, train_records=None,
          disable_tqdm=None) -> TrainResult           resume=True continues from the last checkpoint
    evaluate(model, tok, records, task, *, batch_size=32, max_new_tokens=None) -> EvalResult
    answer_loss(model, tok, records, *, batch_size=16) -> float   (held-out loss per answer token)
    generate(model, tok, records, *, batch_size=32, max_new_tokens=64) -> list[str]
    step_time(model, batch, *, dtype=torch.float32, repeats=3) -> float   median s of fwd+bwd
    set_4bit_compute_dtype(model, dtype) -> int      pin the matmul dtype of every Linear4bit
    set_checkpointing(model, on)                     gradient checkpointing on/off (PEFT or not)
    StepTimer, LossCallback(fn), InterruptAt(step): TrainerCallbacks
    last_checkpoint(output_dir) -> str | None        newest *complete* checkpoint
    save_adapter(model, path) -> Path                atomic (temporary folder, then rename)
    merge_4bit(adapter_dir, cfg, dtype=fp32) -> nn.Module   dequantize the 4-bit base, then merge
    trainable_params(model) -> (trainable, total)

TrainResult(losses, steps, step_times, median_step_s, wall_s, global_step, output_dir)
EvalResult(exact_match, field_scores, n, predictions, references, inputs)
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from peft.helpers import DoraCaching
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import data, models, nf4, settings

METHODS = settings.METHODS
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")
DTYPES = settings.DTYPES
set_checkpointing = models.set_checkpointing


@dataclass(frozen=True)
class TrainConfig:
    method: str = "qlora"                  # full | lora | qlora | dora | qdora (q = 4-bit base)
    task: str = "orders"                   # a folder in data/ (peftlab.data.TASKS)
    model: str | None = None               # None: the profile's model (embedded offline default)
    r: int = 16                            # adapter rank (seed: 16, range 8–64)
    alpha: int = 32                        # scaling α; the update is (α/r)·B·A (seed: α = 2r)
    dropout: float = 0.05                  # dropout on the adapter input (seed: 0.05)
    target_modules: tuple[str, ...] = ATTENTION  # linears that get adapters (seed: attention)
    lr: float = 2e-4                       # peak learning rate (seed: 2e-4)
    batch_size: int = 4                    # sequences per micro-batch (seed: 4)
    grad_accum: int = 4                    # micro-batches per optimizer step (seed: 4 → 16 seqs)
    max_steps: int = 100                   # optimizer steps
    warmup_steps: int = 0                  # linear warm-up steps before the linear decay
    weight_decay: float = 0.0              # AdamW decoupled weight decay
    seed: int = settings.DEFAULT_SEED      # adapter init, dropout and data order
    compute_dtype: str = "auto"            # bf16 | fp16 | fp32 | auto (= the profile's, by hardware)
    gradient_checkpointing: bool = True    # recompute activations in backward: less memory, slower
    optimizer: str = "adamw_torch"         # Trainer optim name; "paged_adamw_8bit" on CUDA
    quant_type: str = "nf4"                # 4-bit code for qlora/qdora: nf4 | fp4
    double_quant: bool = True              # quantize the absmax constants too (QLoRA §3)
    max_length: int = 256                  # truncate longer examples (ours are < 100 tokens)
    train_examples: int | None = None      # use only the first N training records (None: all)
    logging_steps: int = 1                 # log the loss every N optimizer steps
    save_steps: int = 0                    # checkpoint every N steps (0: no checkpoints)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.task not in data.TASKS:
            raise ValueError(f"task must be one of {', '.join(data.TASKS)}, got {self.task!r}")
        if self.compute_dtype not in (*DTYPES, "auto"):
            raise ValueError(f"compute_dtype must be bf16, fp16, fp32 or auto, got {self.compute_dtype!r}")
        for name in ("r", "alpha", "batch_size", "grad_accum", "max_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name at least one linear, e.g. ATTENTION")

    @property
    def quantized(self) -> bool:
        return self.method in ("qlora", "qdora")

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[settings.profile().compute_dtype if self.compute_dtype == "auto" else self.compute_dtype]


def seed_defaults(**overrides) -> TrainConfig:
    """The seed article's starting recipe (C16): r=16, α=32, dropout 0.05, attention, lr 2e-4, 4×4."""
    return replace(TrainConfig(), **overrides)


def recipe(profile: settings.Profile | None = None, **overrides) -> TrainConfig:
    """This kit's recipe per profile; differences from `seed_defaults()` are on purpose and measured
    (notebook 04, benchmarks/bench_qlora.py): for a short CPU run, adapters on all linears, lr 1e-3,
    batch 8 × 1 and no checkpointing reach ≥ 90% held-out exact match on `orders` in 40 steps
    (93% after 30 in development); r, α and dropout stay the seed's. Overrides win."""
    p = profile or settings.profile()
    base = p.pick(
        smoke=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=2, grad_accum=1, max_steps=3,
                   gradient_checkpointing=False),
        cpu=dict(target_modules=ALL_LINEAR, lr=1e-3, batch_size=8, grad_accum=1, max_steps=40,
                 warmup_steps=5, gradient_checkpointing=False),
        gpu=dict(target_modules=ALL_LINEAR, lr=2e-4, batch_size=4, grad_accum=4, max_steps=200,
                 warmup_steps=10, gradient_checkpointing=True,
                 optimizer="paged_adamw_8bit" if p.paged_optim else "adamw_torch"),
    )
    return replace(TrainConfig(seed=p.seed), **{**base, **overrides})


def trainable_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their packed elements × 2."""
    train = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 else 1)  # two 4-bit values per byte
        total += n
        train += n if p.requires_grad else 0
    return train, total


def build_model(cfg: TrainConfig):
    """The model to train for `cfg` and its tokenizer.

    full: dense fp32 master weights, all trainable (compute in cfg.dtype via autocast).
    lora/dora: dense base stored in the compute dtype, frozen; fp32 adapters (PEFT default).
    qlora/qdora: 4-bit base (load_model(bits=4), guarded), prepare_model_for_kbit_training, adapters.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    settings.seed_everything(cfg.seed)  # adapter init (lora_A kaiming) is reproducible
    tok = models.load_tokenizer(cfg.model)
    if cfg.method == "full":
        model = models.load_model(cfg.model, dtype=torch.float32)
        for p in model.parameters():
            p.requires_grad_(True)
        set_checkpointing(model, cfg.gradient_checkpointing)
        return model, tok
    if cfg.quantized:
        model = models.load_model(cfg.model, bits=4, quant_type=cfg.quant_type,
                                  double_quant=cfg.double_quant, dtype=cfg.dtype, compute_dtype=cfg.dtype)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        set_checkpointing(model, cfg.gradient_checkpointing)
        set_4bit_compute_dtype(model, cfg.dtype)  # prepare_* made the hidden states fp32
    else:
        model = models.load_model(cfg.model, dtype=cfg.dtype)
        set_checkpointing(model, cfg.gradient_checkpointing)
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="CAUSAL_LM",
                      target_modules=list(cfg.target_modules), use_dora=cfg.method in ("dora", "qdora"))
    model = get_peft_model(model, lcfg)
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


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest checkpoint-N folder that is complete (Trainer writes trainer_state.json last)."""
    out = Path(output_dir)
    done = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()] if out.is_dir() else []
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def train(cfg: TrainConfig, model: nn.Module, tok, output_dir: str | Path, *,
          callbacks: Sequence[TrainerCallback] = (), resume: bool = False,
          train_records: Sequence[dict] | None = None, disable_tqdm: bool | None = None) -> TrainResult:
    """Train `model` (from build_model(cfg)) on cfg.task's train split with transformers Trainer.

    resume=True continues from last_checkpoint(output_dir) (optimizer, scheduler, RNG and data
    position restored) and starts fresh when there is none. KeyboardInterrupt propagates after
    the checkpoints written so far are on disk.
    """
    import datasets

    if train_records is None:
        ds = data.load_split(cfg.task, "train")
    else:
        ds = datasets.Dataset.from_list(list(train_records))
    if cfg.train_examples:
        ds = ds.select(range(min(cfg.train_examples, ds.num_rows)))
    ds = data.tokenize(ds, tok, cfg.max_length)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="linear", weight_decay=cfg.weight_decay, optim=cfg.optimizer, seed=cfg.seed,
        data_seed=cfg.seed, bf16=cfg.dtype == torch.bfloat16, fp16=cfg.dtype == torch.float16,
        use_cpu=not cuda, logging_steps=cfg.logging_steps, report_to="none",
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=disable_tqdm,
    )
    timer = StepTimer()
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=data.Collator(tok.pad_token_id),
                      callbacks=[timer, *callbacks])
    # one progress bar with the loss on it instead of a printed dict per logged step
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not args.disable_tqdm:
        trainer.add_callback(_LossBar())
    model.train()
    start = last_checkpoint(output_dir) if resume else None
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=start)
    wall = time.perf_counter() - t0
    model.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return TrainResult(losses=[float(h["loss"]) for h in logs], steps=[h["step"] for h in logs],
                       step_times=timer.times, median_step_s=timer.median, wall_s=wall,
                       global_step=trainer.state.global_step, output_dir=str(output_dir))


# --- evaluation ------------------------------------------------------------------------------

@dataclass
class EvalResult:
    exact_match: float                  # share of answers equal to the reference string
    field_scores: dict[str, float]      # per field (JSON key / SQL clause): share correct
    n: int                              # examples scored
    predictions: list[str] = field(repr=False, default_factory=list)
    references: list[str] = field(repr=False, default_factory=list)
    inputs: list[str] = field(repr=False, default_factory=list)


@torch.no_grad()
def generate(model: nn.Module, tok, records: Sequence[dict], *, batch_size: int = 32,
             max_new_tokens: int = 64) -> list[str]:
    """Greedy answers for chat-formatted records (left-padded batches), decoded without specials."""
    was_training = model.training
    model.eval()
    tok.padding_side = "left"  # generation continues from the right end of every row
    out: list[str] = []
    device = next(model.parameters()).device
    for i in range(0, len(records), batch_size):
        prompts = [data.prompt_text(tok, r) for r in records[i:i + batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with DoraCaching():  # DoRA: reuse ‖W+BA‖ and BA across decoding steps (exact; eval mode only)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out += [s.strip() for s in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    tok.padding_side = "right"
    model.train(was_training)
    return out


def evaluate(model: nn.Module, tok, records, task: str, *, batch_size: int = 32,
             max_new_tokens: int | None = None) -> EvalResult:
    """Exact match and per-field scores of greedy answers on `records` (a Dataset or list of dicts)."""
    records = [dict(r) for r in records]
    if not records:
        raise ValueError("evaluate got no records: pass a split, e.g. data.load_split('orders', 'test')")
    refs = [r["output"] for r in records]
    longest = max(len(tok(x, add_special_tokens=False)["input_ids"]) for x in refs)
    preds = generate(model, tok, records, batch_size=batch_size, max_new_tokens=max_new_tokens or longest + 8)
    hits: dict[str, int] = {}
    for p, ref in zip(preds, refs):
        want, got = data.parse_fields(task, ref) or {}, data.parse_fields(task, p) or {}
        for k, v in want.items():
            hits[k] = hits.get(k, 0) + (got.get(k) == v)
    n = len(records)
    return EvalResult(exact_match=sum(p == r for p, r in zip(preds, refs)) / n,
                      field_scores={k: v / n for k, v in hits.items()}, n=n, predictions=preds,
                      references=refs, inputs=[r["input"] for r in records])


def answer_loss(model: nn.Module, tok, records, *, batch_size: int = 16, max_length: int = 256) -> float:
    """Held-out loss: mean cross-entropy per answer token (prompt tokens masked, as in training)."""
    records = [dict(r) for r in records]
    if not records:
        raise ValueError("answer_loss got no records: pass a split, e.g. data.load_split('orders', 'validation')")
    was_training = model.training
    model.eval()
    collate, device = data.Collator(tok.pad_token_id), next(model.parameters()).device
    batches = ({k: v.to(device) for k, v in collate([data.encode(tok, r, max_length) for r in
                                                     records[i:i + batch_size]]).items()}
               for i in range(0, len(records), batch_size))
    loss, _ = nf4.text_nll(model, batches)  # token-weighted over batches, not a mean of batch means
    model.train(was_training)
    return loss


# --- adapters: atomic save, 4-bit merge ------------------------------------------------------

def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """save_pretrained into a temporary sibling folder, then rename it into place.

    An interrupted save leaves the previous adapter at `path` untouched (never half a file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        old = path.with_name(f".{path.name}-old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def merge_4bit(adapter_dir: str | Path, cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Dense model (in `dtype`) = dequantize(4-bit base) + merged adapter.

    The adapter was trained against the *quantized* weights, so it is merged into
    their dequantized values, not into the original checkpoint (which differs by the
    quantization error) and not re-quantized afterwards (which would add new error).
    """
    from peft import PeftModel

    bnb = models.import_bitsandbytes()
    q = models.load_model(cfg.model, bits=4, quant_type=cfg.quant_type, double_quant=cfg.double_quant,
                          dtype=torch.float32)  # fresh: no inference forward has repacked weights yet
    dense = models.load_model(cfg.model, dtype=dtype)
    n = 0
    for name, mod in q.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state)  # (out, in)
            dense.get_submodule(name).weight.data.copy_(w.to(dtype))
            n += 1
    assert n > 0, "no Linear4bit found in the 4-bit base"
    del q
    return PeftModel.from_pretrained(dense, str(adapter_dir)).merge_and_unload().eval()


def config_dict(cfg: TrainConfig) -> dict:
    """The config as a plain dict (for tables and JSON reports)."""
    d = asdict(cfg)
    d["target_modules"] = ",".join(cfg.target_modules)
    return d
