"""vram.measure: vram.estimate compared with (1) exact byte counts of a real transformers + PEFT
model on CPU (weights, adapters, gradients and optimizer states byte for byte; activations against
the unique storages autograd saves), (2) published A100 peaks (Lit-GPT tables, docs/findings.md)
and (3) on a GPU, torch.cuda.max_memory_allocated()."""
import statistics

import pytest
import torch

from peftlab import vram
from peftlab.vram import measure


def test_calibration_rows_within_budget():
    rows = measure.calibration()
    errors = [abs(r["error"]) for r in rows]
    assert len(rows) == 14
    assert statistics.median(errors) <= 0.10 and max(errors) <= 0.20, rows


@pytest.mark.parametrize("kw", [
    dict(method="lora", dtype="fp32", rank=4, seq_len=24, batch=2),
    dict(method="qlora", dtype="fp32", rank=8, seq_len=16, batch=1, grad_ckpt=True),
    dict(method="lora", dtype="bf16", rank=8, seq_len=16, batch=1, lora_dropout=0.05,
         targets=("q_proj", "v_proj", "lm_head")),
])
def test_measurement_on_the_embedded_model(embedded_ready, kw):
    row = measure.compare(vram.Settings(**kw))
    for k in ("weights", "trainable params", "gradients", "optimizer"):
        assert row[f"pred {k}"] == row[f"meas {k}"], k                 # exact bytes
    assert abs(row["activation error"]) < 0.05, row


@pytest.mark.gpu
def test_cuda_peak_matches_max_memory_allocated(embedded_ready):
    s = vram.Settings(method="lora", dtype="bf16", seq_len=512, batch=2)
    meas = measure.measure(None, s)                         # device="cuda" (the default)
    pred = vram.estimate("smollm2-135m", s).peak_allocated
    assert meas["peak_allocated"] == pytest.approx(pred, rel=0.2)
    assert torch.cuda.is_available()
