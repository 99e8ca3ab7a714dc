"""Notebook 04's exercises: a QLoRA configuration for a Colab T4, and a collator that masks the prompt.

    4-bit NF4 base + double quantization + fp16 compute (a T4 has no bf16)      labels = [-100]·|prompt| + answer

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) §3 and §5 ("train on the target only"). The
references are `peftlab.settings.cuda_compute_dtype` (the T4's compute dtype) and `peftlab.data`
(`Collator`, `IGNORE_INDEX`). Solutions: notebooks/solutions/04_qlora_training.py.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import data, settings
from ._verdict import call, exercise, report

NOTEBOOK = "04_qlora_training"
T4_CAPABILITY = (7, 5)  # CUDA compute capability of a Colab T4 (Turing)
LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _bnb_problem(bnb) -> str | None:
    want = settings.torch_dtype(settings.cuda_compute_dtype(T4_CAPABILITY))   # torch.float16 on a T4
    if getattr(bnb, "load_in_8bit", False):
        return "load_in_8bit is LLM.int8(), not QLoRA: set load_in_4bit=True"
    if not getattr(bnb, "load_in_4bit", False):
        return "the base is not quantized: BitsAndBytesConfig(load_in_4bit=True, ...)"
    if bnb.bnb_4bit_quant_type != "nf4":
        return (f"bnb_4bit_quant_type is {bnb.bnb_4bit_quant_type!r} (the default is 'fp4'): QLoRA's data type is "
                "NF4, bnb_4bit_quant_type='nf4' (notebook 02 measured why)")
    if not bnb.bnb_4bit_use_double_quant:
        return ("double quantization is off (the default): bnb_4bit_use_double_quant=True stores the absmax "
                "in 8 bits, 0.5 → 0.127 bit/param (~0.3 GB on a 7B model)")
    dt = bnb.bnb_4bit_compute_dtype
    if dt == torch.bfloat16:
        return ("bnb_4bit_compute_dtype=torch.bfloat16 on a T4: compute capability 7.5 has no bf16 (it is "
                "emulated, slow) — settings.cuda_compute_dtype((7, 5)) says fp16: torch.float16")
    if dt != want:
        return (f"bnb_4bit_compute_dtype is {dt} (float32 is the default): the 4-bit matmuls should run in "
                "torch.float16 on a T4 — fp32 is several times slower")
    return None


def _lora_problem(lc) -> str | None:
    task = getattr(lc.task_type, "value", lc.task_type)
    if task != "CAUSAL_LM":
        return (f"task_type is {task!r}: set task_type='CAUSAL_LM' so get_peft_model builds a causal-LM "
                "wrapper (labels, generate)")
    if lc.target_modules is None:
        return "target_modules is not set: name the linears, e.g. 'all-linear' or ['q_proj', 'v_proj', ...]"
    names = {lc.target_modules} if isinstance(lc.target_modules, str) else set(lc.target_modules)
    if names != {"all-linear"}:
        unknown = sorted(names - LLAMA_LINEARS)
        if unknown:
            return (f"{unknown} are not linear layers of a LLaMA-style model (SmolLM2, Llama, Qwen, Mistral): "
                    f"use 'all-linear' or names from {sorted(LLAMA_LINEARS)}")
        if not {"q_proj", "v_proj"} <= names:
            return "adapt at least q_proj and v_proj (the LoRA paper's choice); QLoRA adapts every linear"
    if not (isinstance(lc.r, int) and 1 <= lc.r <= 256):
        return f"r = {lc.r!r}: a LoRA rank is a small whole number (8–64)"
    if not 0 <= lc.lora_dropout <= 0.2:
        return f"lora_dropout = {lc.lora_dropout}: keep it between 0 and 0.1 (QLoRA used 0.05–0.1)"
    if lc.bias != "none":
        return f"bias={lc.bias!r} trains the base biases too: keep bias='none' (the base stays frozen)"
    return None


@exercise(NOTEBOOK, "my_t4_configs")
def check_t4_configs(fn: Callable[[], tuple]) -> bool:
    """Exercise 1: `fn()` returns (BitsAndBytesConfig, LoraConfig) for QLoRA on a Colab T4."""
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    got, why = call(fn, (), "build them with BitsAndBytesConfig(...) and LoraConfig(...)")
    if why:
        return report(f"fn() {why}", "")
    if not (isinstance(got, tuple) and len(got) == 2):
        return report(f"return a pair (BitsAndBytesConfig, LoraConfig), got {type(got).__name__}", "")
    bnb, lc = got
    if isinstance(bnb, LoraConfig) and isinstance(lc, BitsAndBytesConfig):
        return report("the pair is swapped: return (BitsAndBytesConfig, LoraConfig)", "")
    if not isinstance(bnb, BitsAndBytesConfig) or not isinstance(lc, LoraConfig):
        return report(f"return (BitsAndBytesConfig, LoraConfig), got ({type(bnb).__name__}, {type(lc).__name__})", "")
    why = _bnb_problem(bnb) or _lora_problem(lc)
    return report(why, f"NF4 + double quantization, fp16 compute (T4), LoRA r={lc.r} on "
                       f"{lc.target_modules if isinstance(lc.target_modules, str) else sorted(lc.target_modules)}")


def _examples() -> list[dict]:
    """Three (prompt, answer) id lists of different lengths; the answers end with eos = 2."""
    return [dict(prompt_ids=[5, 6, 7, 8], answer_ids=[20, 21, 2]),
            dict(prompt_ids=[5, 9], answer_ids=[30, 2]),
            dict(prompt_ids=[5, 6, 7, 8, 9, 10], answer_ids=[40, 41, 42, 43, 2])]


def _collate(examples: list[dict], pad_id: int, mask_prompt: bool = True, pad_label: int = data.IGNORE_INDEX,
             mask_shift: int = 0, left: bool = False, shift_labels: bool = False) -> dict:
    """The reference (defaults: `data.Collator` on prompt-masked rows) and its usual wrong variants."""
    rows = []
    for e in examples:
        ids = e["prompt_ids"] + e["answer_ids"]
        n = len(e["prompt_ids"]) + mask_shift if mask_prompt else 0
        labels = [data.IGNORE_INDEX] * n + ids[n:]
        if shift_labels:
            labels = labels[1:] + [data.IGNORE_INDEX]
        rows.append(dict(input_ids=ids, labels=labels))
    out = data.Collator(pad_id)(rows)
    width = out["input_ids"].shape[1]
    for i, r in enumerate(rows):
        pad = width - len(r["input_ids"])
        out["labels"][i, len(r["labels"]):] = pad_label
        if left and pad:
            for k in out:
                out[k][i] = torch.roll(out[k][i], pad)
    return out


@exercise(NOTEBOOK, "my_collate")
def check_collate(fn: Callable[[list, int], dict]) -> bool:
    """Exercise 2: `fn(examples, pad_id)` pads a batch on the right to its longest row and masks the
    prompt: input_ids, attention_mask (0 on padding), labels (-100 on the prompt and the padding)."""
    pad, ex = 1, _examples()
    got, why = call(fn, ([dict(e) for e in ex], pad), "each example has prompt_ids and answer_ids (lists)")
    if why:
        return report(f"fn(examples, pad_id) {why}", "")
    ref = _collate(ex, pad)
    if not isinstance(got, dict) or not set(ref) <= set(got):
        return report(f"return a dict with {sorted(ref)}, got {type(got).__name__}"
                      + (f" with keys {sorted(got)}" if isinstance(got, dict) else ""), "")
    try:
        got = {k: torch.as_tensor(got[k]).long() for k in ref}
    except (TypeError, ValueError) as err:
        return report(f"the values must be rectangular (padded) lists or tensors: {err}", "")
    mistakes = {
        "the prompt is not masked: its labels must be -100 (data.IGNORE_INDEX), so only the answer is learned":
            _collate(ex, pad, mask_prompt=False),
        "the padding is labelled with pad_id: label it -100 too, or the model learns to emit padding":
            _collate(ex, pad, pad_label=pad),
        "off by one: the first answer token is masked too; mask exactly len(prompt_ids) positions":
            _collate(ex, pad, mask_shift=1),
        "off by one: the last prompt token is left unmasked; mask exactly len(prompt_ids) positions":
            _collate(ex, pad, mask_shift=-1),
        "the labels are shifted by one: leave them aligned with input_ids — the model shifts them inside its loss":
            _collate(ex, pad, shift_labels=True),
        "pad on the right (after the answer), as peftlab.data.Collator does; training masks padding by attention_mask":
            _collate(ex, pad, left=True),
    }
    for hint, wrong in mistakes.items():
        if all(got[k].shape == wrong[k].shape and torch.equal(got[k], wrong[k]) for k in ref):
            return report(hint, "")
    for k in ("input_ids", "attention_mask", "labels"):
        if got[k].shape != ref[k].shape:
            return report(f"{k} has shape {tuple(got[k].shape)}, expected {tuple(ref[k].shape)} = (batch, longest "
                          "row): pad every row to the batch's longest, not to a fixed length", "")
        if not torch.equal(got[k], ref[k]):
            row = int((got[k] != ref[k]).any(dim=1).nonzero()[0])
            hint = {"attention_mask": " (1 on real tokens, 0 on padding)",
                    "labels": " (-100 on prompt and padding, the answer ids elsewhere)"}.get(k, " (prompt + answer, then pad_id)")
            return report(f"{k} row {row} is {got[k][row].tolist()}, expected {ref[k][row].tolist()}{hint}", "")
    return report(None, "right-padded to the longest row, prompt and padding labelled -100, "
                        "attention_mask 0 on padding (= peftlab.data.Collator)")
