"""vram.estimate compared with (1) exact byte counts of a real transformers + PEFT model on CPU
(weights, adapters, gradients and optimizer states byte for byte; activations against the
unique storages autograd saves), (2) published A100 peaks (Lit-GPT tables in FINDINGS.md) and
(3) hand-computed facts (LLaMA-2-7B parameter counts, NF4 double-quantization saving)."""
import json
import statistics

import pytest
import torch

from peftlab import vram, vram_measure


def test_parameter_counts_match_the_published_ones():
    assert vram.PRESETS["llama-2-7b"].n_params() == 6_738_415_616
    assert vram.PRESETS["smollm2-135m"].n_params() == 134_515_008
    est = vram.estimate("llama-2-7b", method="lora", rank=8, targets="q_proj,v_proj")
    assert est.breakdown["trainable params"] == 4_194_304 * 4      # PEFT keeps adapters in fp32
    assert vram.estimate("llama-2-7b", method="full").breakdown["trainable params"] > 13e9


def test_double_quant_saves_0373_bits_per_quantized_weight():
    a = vram.PRESETS["llama-2-7b"]
    n = sum(i * o for i, o in a.linears().values()) * a.layers
    kw = dict(method="qlora", seq_len=8)
    saved = (vram.estimate(a, double_quant=False, **kw).breakdown["weights"]
             - vram.estimate(a, double_quant=True, **kw).breakdown["weights"])
    assert saved == pytest.approx(n * 0.373 / 8, rel=0.01)            # ≈ 0.30 GB measured in 7B


def test_calibration_rows_within_budget():
    rows = vram_measure.calibration()
    errors = [abs(r["error"]) for r in rows]
    assert len(rows) == 14
    assert statistics.median(errors) <= 0.10 and max(errors) <= 0.20, rows


def test_activations_grow_linearly_and_checkpointing_keeps_block_inputs():
    base = dict(method="lora", seq_len=1024)
    a1, a2 = (vram.estimate("llama-2-7b", batch=b, **base).breakdown["activations"] for b in (1, 2))
    assert a2 == pytest.approx(2 * a1, rel=1e-3)
    ck = vram.estimate("llama-2-7b", grad_ckpt=True, **base)
    a = vram.PRESETS["llama-2-7b"]
    assert ck.detail["block inputs (checkpoints)"] == 1024 * a.layers * a.hidden * 2
    eager = vram.estimate("llama-2-7b", attn="eager", **base).breakdown["activations"]
    assert eager - a1 > a.layers * a.heads * 1024 * 1024 * 4     # the T×T softmax per layer


@pytest.mark.parametrize("kw, match", [
    (dict(seq_len=0), "seq_len"), (dict(seq_len=-5), "seq_len"), (dict(batch=0), "batch"),
    (dict(rank=5000), "rank 5000 is above"), (dict(rank=0), "rank"),
    (dict(targets="q_proj,foo"), "unknown target"), (dict(method="prefix"), "method"),
    (dict(optimizer="adam"), "optimizer"),
])
def test_bad_settings_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        vram.estimate("llama-2-7b", **kw)


def test_unknown_preset_suggests_and_bad_config_explains(tmp_path):
    with pytest.raises(ValueError, match="did you mean llama-2-7b"):
        vram.estimate("llama2-7b")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read config"):
        vram.estimate(str(bad))
    with pytest.raises(ValueError, match="cannot read config"):
        vram.estimate(str(tmp_path / "missing" / "config.json"))
    bad.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="lacks a field"):
        vram.estimate(str(bad))


def test_config_json_equals_preset(embedded_ready):
    assert vram.resolve(str(embedded_ready / "config.json")).linears() == vram.PRESETS["smollm2-135m"].linears()
    e1 = vram.estimate(str(embedded_ready), method="qlora", seq_len=64)
    e2 = vram.estimate("smollm2-135m", method="qlora", seq_len=64)
    assert e1.breakdown == e2.breakdown


@pytest.mark.parametrize("kw", [
    dict(method="lora", dtype="fp32", rank=4, seq_len=24, batch=2),
    dict(method="qlora", dtype="fp32", rank=8, seq_len=16, batch=1, grad_ckpt=True),
    dict(method="lora", dtype="bf16", rank=8, seq_len=16, batch=1, lora_dropout=0.05,
         targets=("q_proj", "v_proj", "lm_head")),
])
def test_measurement_on_the_embedded_model(embedded_ready, kw):
    row = vram_measure.compare(vram.Settings(**kw))
    for k in ("weights", "trainable params", "gradients", "optimizer"):
        assert row[f"pred {k}"] == row[f"meas {k}"], k                 # exact bytes
    assert abs(row["activation error"]) < 0.05, row


@pytest.mark.gpu
def test_cuda_peak_matches_max_memory_allocated(embedded_ready):
    s = vram.Settings(method="lora", dtype="bf16", seq_len=512, batch=2)
    meas = vram_measure.measure(None, s)                         # device="cuda" (the default)
    pred = vram.estimate("smollm2-135m", s).peak_allocated
    assert meas["peak_allocated"] == pytest.approx(pred, rel=0.2)
    assert torch.cuda.is_available()


@pytest.mark.parametrize("preset, cfg", [
    ("phi-1.5", {"model_type": "phi", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                 "num_attention_heads": 32, "vocab_size": 51200, "hidden_act": "gelu_new",
                 "layer_norm_eps": 1e-5, "tie_word_embeddings": False}),
    ("stablelm-alpha-3b", {"model_type": "gpt_neox", "hidden_size": 4096, "intermediate_size": 16384,
                           "num_hidden_layers": 16, "num_attention_heads": 32, "vocab_size": 50688,
                           "hidden_act": "gelu", "use_parallel_residual": True, "tie_word_embeddings": False}),
    ("qwen2.5-0.5b", {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                      "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                      "vocab_size": 151936, "hidden_act": "silu", "rms_norm_eps": 1e-6,
                      "tie_word_embeddings": True}),
])
def test_hf_configs_of_other_families_parse_like_the_presets(tmp_path, preset, cfg):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert replace_name(vram.from_config(path)) == replace_name(vram.PRESETS[preset])


def replace_name(arch):
    from dataclasses import replace
    return replace(arch, name="")
