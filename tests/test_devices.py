"""Device-correct by construction: every from-scratch function works on the device of its input.

The from-scratch layers (`lora.LoRALinear`, `dora.DoRALinear`, the wrong-axis DoRA) are run the
same way: built around a CPU `nn.Linear`, forward, backward, merge and unmerge, each result on the CPU.

The bug class: a function creates a helper tensor (`torch.zeros(shape)`, `torch.tensor(levels)`,
`torch.arange(n)`) on the *default* device instead of its input's, and then mixes the two — on a GPU
that is a CPU tensor meeting a CUDA one. Without a GPU we catch it the other way round: the inputs
are real CPU tensors and the default device is switched to `meta`, so every tensor created without
`device=` lands on `meta` and the first op that mixes it with the input raises "Tensor on device meta
is not on the expected device cpu". Some ops (in-place `meta.add_(cpu)`) let a mix through on meta
where CUDA would refuse it, so a dispatch mode also checks every op: all tensor arguments on one
device, as CUDA demands (0-dim CPU scalars excepted, as in PyTorch). PyTorch's FakeTensorMode can
fake `cuda` tensors on a CPU-only build too, but cannot index or slice them there, which every
from-scratch function does.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from peftlab import dora, lora, lowrank, nf4


class OneDevicePerOp(TorchDispatchMode):
    """Raise on any op whose tensor arguments sit on two devices (0-dim CPU tensors allowed)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in leaves if not (t.dim() == 0 and t.device.type == "cpu")}
        if len(devices) > 1:
            raise RuntimeError(f"{func} mixes devices {sorted(devices)}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def foreign_default_device():
    torch.set_default_device("meta")
    try:
        with OneDevicePerOp():
            yield
    finally:
        torch.set_default_device(None)


def _w(shape=(96, 64), seed=0):
    with torch.device("cpu"):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _base(w):
    """A CPU nn.Linear holding w (out, in) and a bias: the frozen layer an adapter wraps."""
    with torch.device("cpu"):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def _layer_step(w, cls, **kw):
    """Wrap, train-mode forward + backward, merge, unmerge: every tensor the layer touches."""
    layer = cls(_base(w), r=4, alpha=8, **kw).train()
    with torch.no_grad():
        layer.lora_B.weight.copy_(0.1 * _w((w.shape[0], 4), seed=2))  # B ≠ 0: A and m get gradients too
    x = _w((5, w.shape[1]), seed=1).requires_grad_(True)
    y = layer(x)
    y.pow(2).sum().backward()
    layer.merge()
    merged = layer(x).detach()
    layer.unmerge()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    return (y.detach(), x.grad, merged, layer.delta_weight(), dora.effective_weight(layer), *grads)


def _tiny_model(w):
    """{layers.0.q_proj, layers.0.v_proj}: enough structure for inject, MDRecorder and adapter swaps."""
    block = torch.nn.ModuleDict({"q_proj": _base(w), "v_proj": _base(2 * w)})
    return torch.nn.ModuleDict({"layers": torch.nn.ModuleList([block])})


def _inject_and_record(w, layer_cls):
    model = _tiny_model(w)
    lora.inject(model, ["q_proj", "v_proj"], r=4, alpha=8, layer_cls=layer_cls)
    rec = dora.MDRecorder(model, "q_proj")
    for m in lora.lora_layers(model).values():
        with torch.no_grad():
            m.lora_B.weight.copy_(0.1 * _w((w.shape[0], 4), seed=3))
    rec.record(model, 1)
    state = lora.adapter_state_dict(model)
    lora.load_adapter(model, state)
    lora.merge_all(model)
    lora.unmerge_all(model)
    assert rec.rows[0]["dD"] > 0
    return tuple(state.values())


CASES = {
    "nf4.quantize_4bit": lambda w: nf4.quantize_4bit(w),
    "nf4.dequantize_4bit": lambda w: nf4.dequantize_4bit(nf4.quantize_4bit(w)),
    "nf4.dequantize_4bit (double quant)": lambda w: nf4.dequantize_4bit(nf4.quantize_4bit(w, double_quant=True)),
    "nf4.fake_quantize fp4": lambda w: nf4.fake_quantize(w, quant_type="fp4"),
    "nf4.fake_quantize int4": lambda w: nf4.fake_quantize(w, quant_type="int4"),
    "nf4.nearest_code": lambda w: nf4.nearest_code(w.reshape(-1).clamp(-1, 1), nf4.nf4_code()),
    "nf4.error_stats": lambda w: nf4.error_stats(w, nf4.fake_quantize(w)),
    "lowrank.best_rank_r": lambda w: lowrank.best_rank_r(w, 4),
    "lowrank.rank_for_energy": lambda w: lowrank.rank_for_energy(lowrank.spectrum(w), 0.9),
    "lowrank.error_curve": lambda w: lowrank.error_curve(lowrank.spectrum(w)),
    "lowrank.subspace_similarity": lambda w: lowrank.subspace_similarity(lowrank.left_singular(w, 8),
                                                                        lowrank.left_singular(w * 2, 8)),
    "dora.dora_weight": lambda w: dora.dora_weight(w, 0.1 * w, dora.row_norm(w)),
    "dora.delta_m_d": lambda w: dora.delta_m_d(w, 1.1 * w),
    "dora.decompose": lambda w: dora.decompose(w),
    "lora.LoRALinear": lambda w: _layer_step(w, lora.LoRALinear),
    "lora.LoRALinear (dropout, rsLoRA)": lambda w: _layer_step(w, lora.LoRALinear, dropout=0.1, use_rslora=True),
    "dora.DoRALinear": lambda w: _layer_step(w, dora.DoRALinear),
    "dora.DoRALinear (dropout, full norm gradient)": lambda w: _layer_step(w, dora.DoRALinear, dropout=0.1,
                                                                          detach_norm=False),
    "dora.WrongAxisDoRALinear": lambda w: _layer_step(w, dora.WrongAxisDoRALinear),
    "lora.inject + MDRecorder + adapter swap": lambda w: _inject_and_record(w, lora.LoRALinear),
    "lora.inject DoRA + MDRecorder + adapter swap": lambda w: _inject_and_record(w, dora.DoRALinear),
}


@pytest.mark.parametrize("name", list(CASES))
def test_runs_on_the_inputs_device(name, foreign_default_device):
    out = CASES[name](_w())
    tensors = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]
    for field in getattr(out, "__dataclass_fields__", {}):  # Quant4: every tensor it holds
        v = getattr(out, field)
        tensors += [v] if isinstance(v, torch.Tensor) else []
    assert all(t.device.type == "cpu" for t in tensors), f"{name} returned a tensor on another device"


def test_the_check_can_fail(foreign_default_device):
    """A function that builds its helper tensor on the default device is caught."""
    def bad_rank(scaled):
        rank = torch.zeros(scaled.shape, dtype=torch.uint8)  # the old nearest_code line: no device=
        return rank.add_(scaled.gt(0.5))

    with pytest.raises(RuntimeError, match="device"):
        bad_rank(_w().reshape(-1))
