"""vram.spec and vram.terms: vram.estimate compared with hand-computed facts (LLaMA-2-7B parameter
counts, NF4 double-quantization saving, linear growth, checkpointing), with `peftlab.lora`'s
LLaMA-2 counting (the same shapes, counted twice), with HF config.json files of other families,
and its errors; the fit rule against the GPU list; and `import peftlab.vram` without ipywidgets.
(Measured bytes and published peaks: tests/test_vram_measure.py.)"""
import json
import subprocess
import sys

import pytest

from peftlab import lora, vram


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


@pytest.mark.parametrize("size", ["7B", "13B", "70B"])
def test_llama2_shapes_agree_with_lora_counting(tmp_path, size):
    """lora.LLAMA2_CONFIGS (the from-scratch lesson) and vram's llama-2 presets are one set of shapes."""
    cfg = lora.LLAMA2_CONFIGS[size]
    preset = vram.PRESETS[f"llama-2-{size.lower()}"]
    assert lora.linear_dims(cfg) == preset.linears()
    assert lora.count_base_params(cfg) == preset.n_params()
    for targets in (["q_proj", "v_proj"], lora.ALL_LINEAR):
        est = vram.estimate(preset, method="lora", rank=16, targets=targets)
        assert est.breakdown["trainable params"] == 4 * lora.count_lora_params(cfg, 16, targets)  # fp32
    path = tmp_path / "config.json"                          # the same dict as an HF config.json
    path.write_text(json.dumps({**cfg, "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5}))
    assert replace_name(vram.from_config(path)) == replace_name(preset)


def test_fits_and_headroom_are_one_rule():
    e = vram.estimate("llama-2-13b", method="qlora", rank=16, targets="q_proj,k_proj,v_proj,o_proj",
                      seq_len=2048, grad_ckpt=True, optimizer="paged_adamw_8bit")
    need = e.peak_allocated * (1 + vram.RESERVED_OVERHEAD) + vram.CUDA_CONTEXT
    assert e.required_bytes == pytest.approx(need)
    assert e.headroom_gb(24) == pytest.approx(24 - need / 1e9)
    rows = e.gpu_fits()
    assert [g for g, _, _ in rows] == list(vram.GPUS)
    for g, ok, free in rows:
        assert ok == e.fits(vram.GPUS[g]) == (free >= 0)
    assert not e.fits(e.required_bytes / 1e9 - 0.01) and e.fits(e.required_bytes / 1e9 + 0.01)


def test_stacks_are_spelled_by_keyword():
    hf = vram.STACKS["hf"]
    assert hf.adapter_fp32 and hf.fp32_loss and not hf.fused_qkv
    assert vram.STACKS["litgpt"].bnb_keeps_input and vram.STACKS["litgpt"].quantize_lm_head


def test_import_needs_no_ipywidgets():
    """The estimator (and `peftlab estimate`) load without the widget stack; the planner brings it."""
    code = ("import sys, peftlab.vram as v; v.estimate('llama-2-7b'); "
            "print('ipywidgets' in sys.modules, 'peftlab.vram.measure' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
