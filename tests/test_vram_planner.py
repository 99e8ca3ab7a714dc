"""The VRAM planner without a kernel: the traitlets model recomputes vram.estimate when a setting
changes, the view's controls drive the model (dropdown, sliders, config path), the total HTML and
the plotly figure follow, impossible settings show a message in the widget instead of raising."""
from peftlab import vram
from peftlab.vram import planner


def test_model_recomputes_on_every_input():
    m = planner.PlannerModel(model="llama-2-13b", method="qlora", seq_len=512)
    t0 = m.estimate.total
    m.seq_len = 2048
    assert m.estimate.total > t0
    assert m.estimate.total == vram.estimate("llama-2-13b", method="qlora", seq_len=2048,
                                             optimizer="paged_adamw_8bit").total
    m.method = "full"
    assert "Total:" in m.readout() and m.message == ""
    assert not dict((g, ok) for g, ok, _ in m.fits())["T4 16GB"]


def test_impossible_settings_give_a_message_not_an_exception():
    m = planner.PlannerModel(model="smollm2-135m", method="lora")
    m.rank = 200                                    # k_proj/v_proj are only 192 wide
    assert "above min(in, out)" in m.message and m.estimate is None
    assert m.readout() == "Total: —" and m.figure() is None and m.fits() == []
    m.rank = 8
    assert m.message == "" and m.estimate is not None
    m.targets = "q_proj,nope"
    assert "unknown target" in m.message
    m.targets = "q_proj,v_proj"
    for name, bad in (("seq_len", 0), ("batch", -2)):
        setattr(m, name, bad)
        assert name in m.message and m.estimate is None
        setattr(m, name, 1)
    assert m.message == ""


def test_view_controls_drive_the_readout_and_the_figure():
    v = planner.VRAMPlanner()
    assert "peftlab-vram-planner" in v._dom_classes
    for w, cls in ((v.method, "method"), (v.seq_len, "seq-len"), (v.batch, "batch"),
                   (v.rank, "rank"), (v.total, "total")):
        assert f"peftlab-vram-{cls}" in w._dom_classes
    before, fig0 = v.total.value, v.figure
    v.method.value = "full"                         # a dropdown
    after_method = v.total.value
    assert after_method != before and v.figure is not fig0
    v.seq_len.value = 4096                          # a slider
    assert v.total.value != after_method
    acts = [t.y[0] for t in v.figure.data if t.name == "activations"][0]
    assert acts * 1e9 == v.model.estimate.breakdown["activations"]
    assert v.plot.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    v.batch.value = 4
    assert v.model.batch == 4


def test_view_shows_bad_config_path_inside_the_widget(tmp_path):
    v = planner.VRAMPlanner()
    good = v.total.value
    v.config_path.value = str(tmp_path / "nothing.json")
    assert "cannot read config" in v.message.value and v.total.value == "<b>Total: —</b>"
    v.config_path.value = ""
    assert v.total.value == good and v.message.value == ""
    v.preset.value = "qwen2.5-0.5b"
    assert v.model.model == "qwen2.5-0.5b" and v.total.value != good


def test_gpu_list_and_fit_rule_come_from_the_estimate():
    v = planner.VRAMPlanner(planner.PlannerModel(model="llama-2-13b", method="qlora"))
    rows = v.model.fits()
    assert rows == v.model.estimate.gpu_fits() and [g for g, _, _ in rows] == list(vram.GPUS)
    for g, ok, free in rows:
        assert f"{'✅' if ok else '❌'} {g}: {free:+.1f} GB left" in v.gpus.value
