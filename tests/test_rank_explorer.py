"""peftlab.rank_explorer: the model's numbers against lowrank/lora, and the view reacting to input.

Drives the traitlets model and the ipywidgets view without a kernel: a slider change and a
dropdown change must change the readout text and the figure; bad input shows a message.
"""
import pytest
import torch
from torch import nn

from peftlab import lowrank, rank_explorer


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 12))


def test_model_numbers(net):
    m = rank_explorer.RankExplorerModel(rank_explorer.linear_weights(net), rank=5)
    assert m.layers == ["0", "2"] and m.layer == "0" and m.max_rank == 24
    s = lowrank.spectrum(net[0].weight)
    d = m.summary
    assert d["error"] == pytest.approx(lowrank.relative_error(s, 5))
    assert (d["lora_params"], d["full_params"]) == (5 * (40 + 24), 40 * 24)
    m.layer = "2"
    assert m.max_rank == 12 and m.summary["full_params"] == 24 * 12


def test_view_reacts_to_slider_and_dropdown(net):
    view = rank_explorer.RankExplorer.from_model(net, rank=3)
    assert "peftlab-rank-explorer" in view._dom_classes
    assert "peftlab-rank-slider" in view.slider._dom_classes
    text0, fig0 = view.readout.value, view.figure
    assert "r = 3 of 24" in text0 and len(view.plot.outputs) == 1
    view.slider.value = 10  # what a learner does
    assert view.model.rank == 10 and "r = 10 of 24" in view.readout.value
    assert view.readout.value != text0 and view.figure is not fig0
    assert view.figure.data[0].x[-1] == 10  # the kept part of the spectrum ends at the cut
    spec = view.plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert spec["data"][0]["x"][-1] == 10
    view.dropdown.value = "2"
    assert view.slider.max == 12 and view.slider.value == 10 and "12×24" in view.readout.value
    view.slider.value = 12
    assert "error ‖W−W_r‖/‖W‖ = 0.0000" in view.readout.value  # full rank: exact


def test_bad_input_shows_message_not_traceback(net):
    view = rank_explorer.RankExplorer.from_model(net, rank=3)
    fig = view.figure
    view.model.rank = 0
    assert "⚠" in view.readout.value and "r ≥ 1" in view.readout.value
    assert view.figure is fig  # the last good figure stays
    view.model.rank = 500
    assert "pick r ≤ 24" in view.readout.value
    view.model.layer = "nope"
    assert "unknown layer" in view.readout.value and view.dropdown.value == "0"
    view.model.layer, view.model.rank = "0", 4
    assert "⚠" not in view.readout.value
    with pytest.raises(ValueError, match="weights is empty"):
        rank_explorer.RankExplorerModel({})
