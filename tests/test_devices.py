"""Device-correct by construction: every from-scratch function works on the device of its input.

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

from peftlab import dora, lowrank, nf4


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
