"""DoRA from scratch (peftlab.dora) compared with PEFT's `use_dora=True` layer.

Compared: outputs and gradients (input, A, B, magnitude) of `DoRALinear` against
PEFT's lora.Linear + DoraLinearLayer after a state-dict copy, over a table of
(r, alpha, dtype, bias, rsLoRA), with init_lora_weights=False and a perturbed
magnitude so that every term is non-trivial; dropout in training mode with the
same seed; merge round trip and PEFT's merge_and_unload; the wrong-axis variant
(norm per input column) failing the same comparison; the §4.3 detach (same
forward, different A/B gradients, one (out, in) V fewer saved for backward, counted by
peftlab.memory); validation shared with
lora.py; ΔM / ΔD on weights whose answer is known.
"""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from peftlab import dora, lora, memory

IN, OUT = 24, 16
# tolerances: ours runs PEFT's ops in PEFT's order, and the measured differences are exactly 0
# (peft 0.21.2, torch 2.13 CPU); allow float noise in fp32 and one bf16 ulp (2^-7 relative) in bf16.
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=8e-3)}

# (r, alpha, base dtype, bias, use_rslora)
CASES = [
    (1, 1, torch.float32, True, False),
    (4, 8, torch.float32, False, False),
    (8, 16, torch.float32, True, True),
    (8, 4, torch.float32, False, True),
    (4, 8, torch.bfloat16, True, False),
    (8, 16, torch.bfloat16, False, True),
    (2, 32, torch.bfloat16, True, False),
]


def make_pair(r, alpha, dtype, bias, rslora, dropout=0.0, in_f=IN, out_f=OUT, cls=dora.DoRALinear):
    """A PEFT DoRA layer with random A, B and a perturbed m, and ours holding the same state."""
    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    holder = nn.Sequential()
    holder.add_module("lin", copy.deepcopy(base))
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["lin"], use_dora=True, use_rslora=rslora,
                     init_lora_weights=False, lora_dropout=dropout)
    theirs = get_peft_model(holder, cfg).base_model.model.lin
    with torch.no_grad():  # m ≠ ‖W + sBA‖ so that m/‖V‖ ≠ 1 and the magnitude matters (m stays > 0)
        m = theirs.lora_magnitude_vector["default"].weight
        m.mul_(torch.empty(m.shape).uniform_(0.5, 1.5))
    ours = cls(copy.deepcopy(base), r, alpha, dropout=dropout, use_rslora=rslora)
    return theirs, ours


def run(layer, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad


def grads(layer, peft: bool):
    if peft:
        return [layer.lora_A["default"].weight.grad, layer.lora_B["default"].weight.grad,
                layer.lora_magnitude_vector["default"].weight.grad]
    return [layer.lora_A.weight.grad, layer.lora_B.weight.grad, layer.lora_magnitude_vector.grad]


@pytest.mark.parametrize("r,alpha,dtype,bias,rslora", CASES)
def test_outputs_and_gradients_match_peft(r, alpha, dtype, bias, rslora):
    theirs, ours = make_pair(r, alpha, dtype, bias, rslora)
    dora.copy_from_peft(ours, theirs)
    x = torch.randn(3, 5, IN, dtype=dtype)
    g = torch.randn(3, 5, OUT, dtype=dtype)
    y_t, gx_t = run(theirs, x, g)
    y_o, gx_o = run(ours, x, g)
    assert y_o.dtype == y_t.dtype == dtype
    torch.testing.assert_close(y_o, y_t, **TOL[dtype])
    torch.testing.assert_close(gx_o, gx_t, **TOL[dtype])
    for a, b in zip(grads(ours, False), grads(theirs, True)):
        assert a is not None and a.abs().sum() > 0
        torch.testing.assert_close(a, b, **TOL[torch.float32])  # adapter grads are fp32 in both


def test_dropout_in_training_matches_peft():
    # PEFT adds the DoRA correction on the dropped input but keeps W x on the clean one
    theirs, ours = make_pair(4, 8, torch.float32, True, False, dropout=0.3)
    dora.copy_from_peft(ours, theirs)
    theirs.train(), ours.train()
    x, g = torch.randn(6, IN), torch.randn(6, OUT)
    torch.manual_seed(7)
    y_t, gx_t = run(theirs, x, g)
    torch.manual_seed(7)
    y_o, gx_o = run(ours, x, g)
    torch.testing.assert_close(y_o, y_t, **TOL[torch.float32])
    torch.testing.assert_close(gx_o, gx_t, **TOL[torch.float32])
    ours.eval()
    assert not torch.allclose(ours(x), y_o)  # the dropout was really active


def test_init_is_identity_to_base():
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT)
    layer = dora.DoRALinear(copy.deepcopy(base), 4, 8)
    torch.testing.assert_close(layer.lora_magnitude_vector, base.weight.norm(dim=1).detach())
    x = torch.randn(4, IN)
    torch.testing.assert_close(layer(x), base(x))


def test_wrong_axis_fails_the_comparison():
    # square layer, so PEFT's (out,) magnitude fits the wrong variant's (in,) and the copy succeeds
    theirs, wrong = make_pair(4, 8, torch.float32, True, False, in_f=OUT, out_f=OUT,
                              cls=dora.WrongAxisDoRALinear)
    dora.copy_from_peft(wrong, theirs)
    x, g = torch.randn(5, OUT), torch.randn(5, OUT)
    y_t, _ = run(theirs, x, g)
    y_w, _ = run(wrong, x, g)
    assert (y_w - y_t).abs().max() > 1e3 * TOL[torch.float32]["atol"]
    with pytest.raises(AssertionError):
        torch.testing.assert_close(y_w, y_t, **TOL[torch.float32])
    # its merged rows do not carry the magnitude; the right variant's do
    _, right = make_pair(4, 8, torch.float32, True, False, in_f=OUT, out_f=OUT)
    dora.copy_from_peft(right, theirs)
    m = right.lora_magnitude_vector
    torch.testing.assert_close(right.merged_weight().norm(dim=1), m.detach())
    assert not torch.allclose(wrong.merged_weight().norm(dim=1), m.detach(), atol=1e-3)
    # non-square: the state-dict copy already fails on the magnitude's shape
    theirs2, wrong2 = make_pair(4, 8, torch.float32, True, False, cls=dora.WrongAxisDoRALinear)
    with pytest.raises(ValueError, match="magnitude shapes differ"):
        dora.copy_from_peft(wrong2, theirs2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_round_trip_and_peft_merge(dtype):
    theirs, ours = make_pair(4, 8, dtype, True, False)
    dora.copy_from_peft(ours, theirs)
    x = torch.randn(7, IN, dtype=dtype)
    W0 = ours.base.weight.detach().clone()
    with torch.no_grad():
        y = ours(x)
        ours.merge()
        y_merged = ours(x)
        assert ours.merged
        theirs.merge(safe_merge=True)                     # PEFT folds its adapter in place
    tol = TOL[dtype]
    torch.testing.assert_close(y_merged, y, **tol)
    torch.testing.assert_close(ours.base.weight, theirs.get_base_layer().weight, **tol)
    ours.unmerge()
    assert not ours.merged
    torch.testing.assert_close(ours.base.weight, W0, **tol)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), y, **tol)


def test_detach_changes_ab_gradients_not_forward_or_m():
    theirs, det = make_pair(4, 8, torch.float32, False, False)
    full = dora.DoRALinear(copy.deepcopy(det.base), 4, 8, detach_norm=False)
    dora.copy_from_peft(det, theirs)
    dora.copy_from_peft(full, theirs)
    x, g = torch.randn(5, IN), torch.randn(5, OUT)
    with memory.SavedTensorMeter(exclude=det) as s_det:
        y_d = det(x.requires_grad_(True))
    with memory.SavedTensorMeter(exclude=full) as s_full:
        y_f = full(x)
    y_d.backward(g), y_f.backward(g)
    torch.testing.assert_close(y_d, y_f)
    torch.testing.assert_close(det.lora_magnitude_vector.grad, full.lora_magnitude_vector.grad)
    assert not torch.allclose(det.lora_A.weight.grad, full.lora_A.weight.grad, atol=1e-5)
    assert not torch.allclose(det.lora_B.weight.grad, full.lora_B.weight.grad, atol=1e-5)
    # without the detach autograd keeps V = W + sBA (out, in) for the norm's backward
    assert s_full.bytes - s_det.bytes == OUT * IN * 4


def test_validation_is_shared_with_lora():
    base = nn.Linear(IN, OUT)
    for bad in (0, -1, 2.0, OUT + 1):
        with pytest.raises(ValueError) as from_lora:
            lora.LoRALinear(base, bad, 8)
        with pytest.raises(ValueError) as from_dora:
            dora.DoRALinear(base, bad, 8)
        assert str(from_dora.value) == str(from_lora.value)
    with pytest.raises(ValueError, match="nn.Linear"):
        dora.DoRALinear(nn.Conv1d(2, 2, 1), 2, 4)
    with pytest.raises(ValueError, match="dropout"):
        dora.DoRALinear(base, 2, 4, dropout=1.5)
    int_base = nn.Linear(IN, OUT)
    int_base.weight = nn.Parameter(torch.zeros(OUT, IN, dtype=torch.uint8), requires_grad=False)  # packed 4-bit
    with pytest.raises(ValueError, match="qdora"):
        dora.DoRALinear(int_base, 2, 4)


def test_inject_with_dora_layer():
    model = nn.Sequential(nn.Linear(IN, OUT), nn.ReLU(), nn.Linear(OUT, 4))
    names = lora.inject(model, ["0"], r=2, alpha=4, layer_cls=dora.DoRALinear, detach_norm=False)
    assert names == ["0"] and isinstance(model[0], dora.DoRALinear) and not model[0].detach_norm
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_A.weight", "0.lora_B.weight", "0.lora_magnitude_vector"}


def test_delta_m_d_known_answers():
    torch.manual_seed(0)
    W = torch.randn(OUT, IN)
    assert dora.delta_m_d(W, W) == pytest.approx((0.0, 0.0), abs=1e-6)
    dm, dd = dora.delta_m_d(W, 2 * W)                     # pure magnitude change
    assert dm == pytest.approx(W.norm(dim=1).mean().item(), rel=1e-5) and dd == pytest.approx(0, abs=1e-6)
    Q, _ = torch.linalg.qr(torch.randn(IN, IN))
    dm, dd = dora.delta_m_d(W, W @ Q)                     # pure direction change (rows keep their norm)
    assert dm == pytest.approx(0, abs=1e-5) and dd > 0.5
    dm, dd = dora.delta_m_d(W, -W)                        # opposite direction: 1 - cos = 2
    assert dd == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="same 2-D shape"):
        dora.delta_m_d(W, W.T)


def test_effective_weight_matches_merged_weights():
    theirs, ours = make_pair(4, 8, torch.float32, True, False)
    dora.copy_from_peft(ours, theirs)
    torch.testing.assert_close(dora.effective_weight(ours), dora.effective_weight(theirs))
    m, V = dora.decompose(dora.effective_weight(ours))
    torch.testing.assert_close(m, ours.lora_magnitude_vector.detach())  # rows of W' have norm m
    torch.testing.assert_close(V.norm(dim=1), torch.ones(OUT))
    theirs.merge()
    torch.testing.assert_close(dora.effective_weight(ours), theirs.get_base_layer().weight.detach())


def test_md_recorder_and_correlation():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(IN, IN)

    model = nn.Module()
    model.layers = nn.ModuleList([Block(), Block()])
    rec = dora.MDRecorder(model, "q_proj", every=2)
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            model.layers[0].q_proj.weight.mul_(1.1)
        rec.on_step_end(None, type("S", (), {"global_step": step})(), None, model=model)
    assert [(r["step"], r["layer"]) for r in rec.rows] == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert rec.rows[2]["dM"] > rec.rows[0]["dM"] > 0 and rec.rows[1]["dM"] == 0
    assert dora.correlation([1, 2, 3, 4], [2, 4, 6, 8.5]) > 0.99
    assert dora.correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    with pytest.raises(ValueError):
        dora.MDRecorder(model, "nope")
    with pytest.raises(ValueError):
        dora.MDRecorder(model, "q_proj", every=0)


def test_figures_carry_the_data():
    from peftlab import viz
    rows = {"full": [{"step": s, "layer": i, "dM": 0.1 * s, "dD": 0.01 * i} for s in (1, 2) for i in (0, 1)],
            "lora": [{"step": 1, "layer": 0, "dM": 0.2, "dD": 0.02}]}
    fig = viz.delta_md_scatter(rows, {"full": -0.5, "lora": 0.3}, {"full": -0.62, "lora": 0.83})
    assert [len(t.x) for t in fig.data] == [4, 1]
    assert list(fig.data[0].y) == [r["dM"] for r in rows["full"]]
    assert "paper -0.62" in fig.layout.annotations[0].text and "+0.83" in fig.layout.annotations[1].text
    box = viz.magnitude_by_layer({0: [1.0, 2.0], 1: [3.0]})
    assert [list(t.y) for t in box.data] == [[1.0, 2.0], [3.0]]
