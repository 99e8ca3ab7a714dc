"""The block-size explorer without a kernel: the model's numbers against nf4 computed directly,
bad input as a message (no traceback), and the view's controls, readout and figure wired live.
"""
from __future__ import annotations

import pytest
import torch

from peftlab import block_explorer, nf4


@pytest.fixture()
def weights():
    g = torch.Generator().manual_seed(0)
    return {"a.q_proj": torch.randn(128, 192, generator=g) * 0.05,
            "b.down_proj": torch.randn(64, 256, generator=g).pow(3) * 0.01}  # heavy tails


def test_model_numbers_match_nf4(weights):
    m = block_explorer.BlockExplorerModel(weights, blocksize=128, quant_type="fp4")
    w = weights["a.q_proj"]
    expected = nf4.error_stats(w, nf4.fake_quantize(w, "fp4", 128))
    assert m.message == ""
    assert m.summary["rel"] == pytest.approx(expected["rel"], rel=1e-6)
    assert m.summary["bits"] == pytest.approx(4 + 32 / 128)
    assert sum(m.summary["counts"]) == w.numel()
    assert m.summary["levels"] == nf4.fp4_code().tolist()


def test_larger_blocks_crowd_weights_near_zero_and_cost_accuracy(weights):
    m = block_explorer.BlockExplorerModel(weights, layer="b.down_proj", blocksize=64)
    small = dict(m.summary)
    m.blocksize = 4096
    big = m.summary
    assert big["inner"] > small["inner"] and big["rel"] > small["rel"] and big["bits"] < small["bits"]


def test_nf4_beats_int4_on_normal_weights(weights):
    m = block_explorer.BlockExplorerModel(weights, quant_type="int4")
    int4 = m.summary["rel"]
    m.quant_type = "nf4"
    assert m.summary["rel"] < int4


@pytest.mark.parametrize("trait,value,msg", [("blocksize", 100, "not a power of two"),
                                             ("blocksize", 8192, "out of range"),
                                             ("quant_type", "int8", "nf4, fp4, int4"),
                                             ("layer", "nope", "unknown layer")])
def test_bad_input_is_a_message(weights, trait, value, msg):
    m = block_explorer.BlockExplorerModel(weights)
    setattr(m, trait, value)
    assert msg in m.message and m.summary == {} and m.figure() is None
    assert m.readout().startswith("⚠")
    setattr(m, trait, {"blocksize": 64, "quant_type": "nf4", "layer": "a.q_proj"}[trait])
    assert m.message == "" and m.summary


def test_empty_weights_raise():
    with pytest.raises(ValueError, match="linear_weights"):
        block_explorer.BlockExplorerModel({})


def test_view_is_wired(weights):
    view = block_explorer.BlockExplorer(block_explorer.BlockExplorerModel(weights))
    assert "peftlab-block-explorer" in view._dom_classes
    assert "peftlab-block-size" in view.size._dom_classes
    before, fig_before = view.readout.value, view.figure
    view.size.value = 1024                        # the slider drives the model …
    assert view.model.blocksize == 1024 and "block size 1024" in view.readout.value
    assert view.figure is not fig_before and view.plot.outputs
    view.dtype.value = "int4"
    assert "INT4" in view.readout.value and view.readout.value != before
    view.model.blocksize = 100                    # … bad input from code shows a message
    assert "not a power of two" in view.readout.value and view.size.value == 1024
    view.model.blocksize = 256                    # and the slider follows a valid value
    assert view.size.value == 256
    view.layer.value = "b.down_proj"
    assert "b.down_proj" in view.readout.value


def test_linear_weights_skips_output_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    names = block_explorer.linear_weights(LlamaForCausalLM(cfg))
    assert len(names) == 7 and "lm_head" not in names
