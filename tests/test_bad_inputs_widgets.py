"""The widgets on bad and edge inputs (issue 19, class 8), without a kernel: each bad config file or
setting in the VRAM planner vs the message shown IN the widget (readable, one line) and the rule
that no stale total is presented as current (total "—", no GPU list, the last figure greyed and
titled "not current"); the rank and block explorers on a bitsandbytes 4-bit layer vs the SVD /
histogram of its dequantized matrix, and on all-zero, NaN/inf, integer and non-matrix weights vs
a clear message instead of "nan%"; a sweep of planner extremes vs no nan, inf or negative bytes."""
from __future__ import annotations

import itertools
import json
import re

import pytest
import torch
from torch import nn

from peftlab import block_explorer, lowrank, rank_explorer, widgets
from peftlab.vram import planner

BASE = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5)


def plotted_title(view) -> str:
    return view.plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"]


def assert_not_current(view, old_total: str) -> None:
    """The old numbers are gone from the readout and the GPU list; the figure says whose it is."""
    assert view.total.value == "<b>Total: —</b>" and old_total not in view.total.value
    assert view.gpus.value == "" and view.model.estimate is None
    assert view.stale and "peftlab-stale" in view.plot._dom_classes
    assert plotted_title(view).startswith(widgets.STALE)


def assert_current(view) -> None:
    assert view.message.value == "" and not view.stale and "peftlab-stale" not in view.plot._dom_classes
    assert not plotted_title(view).startswith(widgets.STALE) and "GB left" in view.gpus.value


# --- the planner and config files -------------------------------------------------------------------

CONFIGS = {
    "json_list": ("[1, 2]", "holds a list, not a JSON object"),
    "text_config_str": (json.dumps({**BASE, "text_config": "x"}), "text_config is a string, not an object"),
    "empty": ("", "the file is empty"),
    "heads_not_dividing": (json.dumps({**BASE, "hidden_size": 100, "num_attention_heads": 3,
                                       "num_key_value_heads": 3}), "does not divide hidden_size (100)"),
    "hidden_fraction": (json.dumps({**BASE, "hidden_size": 576.5}), "hidden_size must be a whole number"),
    "layers_bool": (json.dumps({**BASE, "num_hidden_layers": True}), "the boolean True"),
    "kv_not_dividing": (json.dumps({**BASE, "num_key_value_heads": 4}), "must be a multiple of"),
    "missing": ("{}", "lacks a field the estimator needs: hidden_size"),
    "absurd": (json.dumps({**BASE, "vocab_size": 10**12}), "beyond any real model"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_planner_bad_config_shows_the_message_and_no_stale_total(tmp_path, name):
    content, needle = CONFIGS[name]
    p = tmp_path / "config.json"
    p.write_text(content)
    v = planner.VRAMPlanner(planner.PlannerModel(model="smollm2-135m", method="lora"))
    old = v.total.value
    assert_current(v)
    v.config_path.value = str(p)
    assert needle in v.model.message and needle in v.message.value   # shown in the widget, readable
    assert v.message.value.startswith("<span") and "⚠" in v.message.value
    assert "&#x27;" not in v.message.value and "\n" not in v.model.message
    assert_not_current(v, old.removeprefix("<b>").removesuffix("</b>"))
    v.config_path.value = ""                                       # back to the preset: current again
    assert v.total.value == old
    assert_current(v)


def test_planner_folder_without_config_and_markup_in_the_path(tmp_path):
    folder = tmp_path / "<b>&x"
    folder.mkdir()
    v = planner.VRAMPlanner()
    v.config_path.value = str(folder)
    assert "no such file" in v.model.message
    assert "&lt;b&gt;&amp;x" in v.message.value and "<b>&x" not in v.message.value  # text, not markup


def test_planner_unexpected_failure_is_a_message_not_an_exception(monkeypatch):
    v = planner.VRAMPlanner()
    old = v.total.value

    def broken(*args, **kw):
        raise TypeError("boom")
    monkeypatch.setattr(planner, "estimate", broken)
    v.model.seq_len = 1024                                         # must not raise out of the observer
    assert "could not estimate these settings (TypeError: boom)" in v.message.value
    assert "report it as a peftlab bug" in v.model.message
    assert_not_current(v, old)


@pytest.mark.parametrize("trait, value, needle", [
    ("targets", "", "targets is empty"),
    ("targets", "q_proj;v_proj", "separate names with commas"),
    ("targets", "q_proj,bogus", "unknown target module 'bogus'"),
    ("rank", 0, "rank must be a positive integer"),
    ("rank", -3, "got -3"),
    ("rank", 200, "above min(in, out) = 192"),
    ("batch", 0, "batch must be a positive integer"),
    ("seq_len", 10**7, "beyond any real model"),
    ("model", "lama-2-7b", "did you mean llama-2-7b"),
    ("model", "", "no model given"),
    ("model", "meta-llama/Llama-2-7b-hf", "never downloads"),
])
def test_planner_bad_setting_shows_the_message(trait, value, needle):
    v = planner.VRAMPlanner(planner.PlannerModel(model="smollm2-135m", method="lora"))
    old = v.total.value
    setattr(v.model, trait, value)
    assert needle in v.message.value, v.message.value
    assert_not_current(v, old)


def test_planner_accepts_peft_spellings():
    v = planner.VRAMPlanner(planner.PlannerModel(model="smollm2-135m", method="lora"))
    v.targets.value = "all-linear"
    assert_current(v)
    assert len(v.model.estimate.settings.targets) == 7
    v.targets.value = "q_proj v_proj"
    assert v.model.estimate.settings.targets == ("q_proj", "v_proj")


def test_planner_extremes_never_show_nan_inf_or_negative_bytes():
    v = planner.VRAMPlanner(planner.PlannerModel(model="smollm2-135m"))
    for method, seq_len, batch, rank in itertools.product(
            ("full", "qlora", "dora"), (v.seq_len.min, v.seq_len.max), (v.batch.min, v.batch.max),
            (v.rank.min, 192)):
        m = v.model
        with m.hold_trait_notifications():
            m.method, m.seq_len, m.batch, m.rank = method, seq_len, batch, rank
        shown = v.total.value + v.gpus.value + v.message.value
        assert not re.search(r"\bnan\b|\binf\b", shown, re.I) and not re.search(r"Total: -", shown), shown
        assert all(b >= 0 for b in m.estimate.breakdown.values())
        assert "GB (" in v.total.value


# --- the explorers on a 4-bit model ----------------------------------------------------------------

@pytest.fixture
def net4():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    dense = nn.Linear(128, 64, bias=False)
    q = bnb.nn.Linear4bit(128, 64, bias=False, quant_type="nf4", compress_statistics=True,
                          compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                 compress_statistics=True)
    q = q.to("cpu")                                               # quantizes: (4096, 1) uint8 + quant_state
    assert q.weight.dtype == torch.uint8 and tuple(q.weight.shape) == (4096, 1)
    return nn.Sequential(q)


def test_rank_explorer_dequantizes_nf4_weights(net4):
    import bitsandbytes.functional as bnbf

    w = net4[0].weight
    view = rank_explorer.RankExplorer.from_model(net4, rank=8)
    m = view.model
    assert m.message == "" and m.max_rank == 64 and m.summary["shape"] == (64, 128)
    expected = lowrank.spectrum(bnbf.dequantize_4bit(w.data, w.quant_state))
    assert torch.allclose(m.spectrum(), expected)
    assert "64×128" in view.readout.value and "SVD of dequantized NF4 weights" in view.readout.value
    assert "4096×1" not in view.readout.value and "nan" not in view.readout.value


def test_block_explorer_dequantizes_nf4_weights(net4):
    view = block_explorer.BlockExplorer.from_model(net4)
    assert view.model.summary["shape"] == (64, 128)
    assert "from dequantized NF4 weights" in view.readout.value
    assert view.model.summary["rel"] < 1e-6                       # NF4 of NF4 values is exact


# --- the explorers on weights without a meaningful answer ------------------------------------------

WEIGHTS = {"ok": torch.randn(8, 6), "zero": torch.zeros(8, 6), "nan": torch.full((8, 6), float("nan")),
           "inf": torch.ones(8, 6) * float("inf"), "int8": torch.ones(8, 6, dtype=torch.int8)}
PROBLEMS = {"zero": "is all zeros (‖W‖ = 0)", "nan": "has 48 NaN/inf values of 48",
            "inf": "has 48 NaN/inf values of 48", "int8": "holds torch.int8 values, not float weights"}


@pytest.mark.parametrize("cls", [rank_explorer.RankExplorerModel, block_explorer.BlockExplorerModel])
@pytest.mark.parametrize("layer", list(PROBLEMS))
def test_explorers_refuse_weights_without_numbers(cls, layer):
    m = cls(WEIGHTS, layer=layer, **({"rank": 2} if cls is rank_explorer.RankExplorerModel else {}))
    assert PROBLEMS[layer] in m.message and "pick another layer" in m.message
    text = m.readout()
    assert text.startswith("⚠") and "nan" not in text.replace("layer nan", "") and "%" not in text
    assert m.figure() is None and m.summary == {}
    m.layer = "ok"
    assert m.message == "" and "nan" not in m.readout()


@pytest.mark.parametrize("cls", [rank_explorer.RankExplorerModel, block_explorer.BlockExplorerModel])
@pytest.mark.parametrize("bad, needle", [(torch.randn(5), "got (5,)"), (torch.zeros(0, 3), "got (0, 3)"),
                                         ([[1.0]], "got list")])
def test_explorers_refuse_non_matrices_at_construction(cls, bad, needle):
    with pytest.raises(ValueError) as err:
        cls({"v": bad})
    assert "weight 'v' is not a non-empty 2-D matrix (out, in)" in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize("make, bad, good", [
    (lambda net: rank_explorer.RankExplorer.from_model(net, rank=3), ("rank", 0), ("rank", 3)),
    (lambda net: block_explorer.BlockExplorer.from_model(net), ("blocksize", 48), ("blocksize", 64)),
])
def test_explorers_grey_the_last_figure_while_the_input_is_invalid(make, bad, good):
    torch.manual_seed(0)
    view = make(nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 12)))
    fig, title = view.figure, plotted_title(view)
    setattr(view.model, *bad)
    assert view.readout.value.startswith("<span") and "⚠" in view.readout.value
    assert view.figure is fig and view.stale and plotted_title(view) == widgets.STALE + title
    setattr(view.model, *good)
    assert not view.stale and plotted_title(view) == title
