"""Solutions to notebook 04's exercises (QLoRA configs for a T4, a collator that masks the prompt)."""
import torch
from peft import LoraConfig
from transformers import BitsAndBytesConfig


def my_t4_configs():
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float16)      # a T4 has no bf16
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return bnb, lora


def my_collate(examples, pad_id):
    rows = [(e["prompt_ids"] + e["answer_ids"], [-100] * len(e["prompt_ids"]) + e["answer_ids"]) for e in examples]
    width = max(len(ids) for ids, _ in rows)                            # the batch's longest row
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in rows:
        pad = width - len(ids)
        out["input_ids"].append(ids + [pad_id] * pad)                   # right padding
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
        out["labels"].append(labels + [-100] * pad)                     # padding is not learned either
    return {k: torch.tensor(v) for k, v in out.items()}
