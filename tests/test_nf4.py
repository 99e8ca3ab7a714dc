"""peftlab.nf4 against bitsandbytes 0.50.2 on CPU.

Compared: the NF4 / FP4 / 8-bit dynamic code tables (constructed here) with bitsandbytes'
tables; our packed 4-bit bytes, absmax constants and dequantized values with
`bitsandbytes.functional.quantize_4bit` / `dequantize_4bit` — random and real (embedded
model) tensors, sizes not divisible by the block size, block sizes 32…4096, fp32/bf16/fp16
inputs; double quantization with bitsandbytes' `compress_statistics` path.

Two bitsandbytes CPU details shape the comparisons (both measured here):
- bnb's native CPU `dequantize_4bit` kernel indexes absmax per row, so for a 2-D tensor whose
  row length is not a multiple of the block size it scales by the wrong block's absmax (e.g.
  (8, 96) with block size 64); its own PyTorch reference kernel and CUDA index the flattened
  tensor, as we do. Dequantized values are therefore compared on the flattened tensor (same
  bytes, same absmax), and 2-D against bnb's reference kernel.
- Double quantization: bnb's native CPU 8-bit blockwise kernel (a fast approximate binary
  search) picks the other neighbour for ~0.2% of the constants that lie within ~1e-4 of the
  midpoint between two levels. Against bnb's reference kernel (nearest level, the definition)
  we are bit-exact; against the native kernel we allow exactly that: < 1% of codes differ, and
  bnb's pick is never more than 1e-4 (in units of the block's absmax2) farther from the value.
"""
from __future__ import annotations

import pytest
import torch

from peftlab import models, nf4

bnb = models.import_bitsandbytes()
F = bnb.functional
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
_REFERENCE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def bnb_reference_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int):
    """bitsandbytes' PyTorch reference kernel for 8-bit blockwise quantization (not the native CPU one)."""
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(_REFERENCE, x, code, blocksize)


def bnb_reference_dequant_4bit(packed, absmax, blocksize, quant_type, shape, dtype):
    return torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(
        _REFERENCE, packed, absmax, blocksize, quant_type, list(shape), dtype)


@pytest.fixture(scope="module")
def real_weights(embedded_ready):
    """Two real weights of the embedded model, read straight from its safetensors file (bf16)."""
    from safetensors import safe_open

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    with safe_open(str(embedded_ready / "model.safetensors"), "pt") as f:
        return {n: f.get_tensor(n) for n in names}


# --- code tables -------------------------------------------------------------------------

def test_nf4_table_equals_bitsandbytes():
    ours, theirs = nf4.nf4_code(), F.get_4bit_type("nf4", device="cpu")
    assert (ours - theirs).abs().max().item() <= 1e-7
    assert (ours < 0).sum() == 7 and (ours == 0).sum() == 1 and (ours > 0).sum() == 8
    assert ours[0] == -1 and ours[-1] == 1 and torch.all(ours[1:] > ours[:-1])


def test_nf4_offset_is_mean_of_last_bin_centres():
    assert nf4.NF4_OFFSET == pytest.approx(0.5 * ((1 - 1 / 30) + (1 - 1 / 32)), abs=1e-7)
    # another offset gives another table: the construction, not a pasted list
    assert not torch.allclose(nf4.nf4_code(0.99), nf4.nf4_code())


def test_fp4_and_dynamic_tables_equal_bitsandbytes():
    assert torch.equal(nf4.fp4_code(), F.get_4bit_type("fp4", device="cpu"))
    assert torch.equal(nf4.dynamic_code(), F.create_dynamic_map())


def test_int4_levels_are_k_over_7():
    code = nf4.int4_code()
    assert sorted(set(torch.round(code * 7).int().tolist())) == list(range(-7, 8))
    assert torch.allclose(code * 7, torch.round(code * 7))


# --- 4-bit quantize / dequantize, bit for bit -------------------------------------------

def _assert_same_as_bnb(w: torch.Tensor, blocksize: int, quant_type: str) -> None:
    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=quant_type)
    q = nf4.quantize_4bit(w, blocksize, quant_type)
    assert torch.equal(q.packed, packed), "packed 4-bit bytes differ"
    assert torch.equal(q.absmax, state.absmax), "absmax constants differ"
    # dequantize: bnb on the flattened tensor (same bytes and absmax; see the module docstring)
    flat_packed, flat_state = F.quantize_4bit(w.reshape(-1), blocksize=blocksize, quant_type=quant_type)
    assert torch.equal(flat_packed, packed)
    theirs = F.dequantize_4bit(flat_packed, flat_state).reshape(w.shape)
    ours = nf4.dequantize_4bit(q)
    assert ours.dtype == w.dtype and ours.shape == w.shape
    assert torch.equal(ours, theirs), f"dequantized values differ by {(ours.float() - theirs.float()).abs().max()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", nf4.BLOCKSIZES)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_random_tensors_bit_exact(dtype, blocksize, quant_type):
    g = torch.Generator().manual_seed(blocksize)
    for shape in [(64, 96), (33, 77), (1000,), (5, 3, 50)]:  # 6144 … 1000 values: most not ÷ blocksize
        w = (torch.randn(shape, generator=g) * 0.05).to(dtype)
        _assert_same_as_bnb(w, blocksize, quant_type)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("blocksize", [64, 4096])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_real_weights_bit_exact(real_weights, dtype, blocksize, quant_type):
    for w in real_weights.values():
        _assert_same_as_bnb(w.to(dtype), blocksize, quant_type)


def test_2d_rows_not_multiple_of_blocksize_match_bnb_reference_kernel():
    w = torch.randn(8, 96)  # rows of 96, blocks of 64: blocks straddle rows
    q = nf4.quantize_4bit(w, 64, "nf4")
    ref = bnb_reference_dequant_4bit(q.packed, q.absmax, 64, "nf4", w.shape, torch.float32)
    assert torch.equal(nf4.dequantize_4bit(q), ref)
    assert (nf4.dequantize_4bit(q) - w).abs().max() <= q.absmax.max() * 0.2  # a sane round trip


def test_odd_count_pads_with_the_code_of_zero():
    q = nf4.quantize_4bit(torch.ones(3), 64, "nf4")
    assert q.packed.shape == (2, 1) and q.packed[1, 0].item() & 0xF == 7  # nf4 code 7 is 0.0


def test_pack_unpack_round_trip():
    idx = torch.randint(0, 16, (10,), dtype=torch.uint8)
    assert torch.equal(nf4.unpack_4bit(nf4.pack_4bit(idx), 10), idx)
    assert nf4.pack_4bit(torch.tensor([1, 2], dtype=torch.uint8)).item() == 0x12  # high nibble first
    with pytest.raises(ValueError, match="even"):
        nf4.pack_4bit(idx[:3])


@pytest.mark.parametrize("quant_type", nf4.QUANT_TYPES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_fake_quantize_equals_the_packed_round_trip(quant_type, double_quant):
    w = (torch.randn(48, 80) * 0.05).to(torch.bfloat16)
    q = nf4.quantize_4bit(w, 128, quant_type, double_quant)
    assert torch.equal(nf4.fake_quantize(w, quant_type, 128, double_quant), nf4.dequantize_4bit(q))


def test_int4_round_trip_error_is_at_most_half_a_step():
    w = torch.randn(4096)
    q = nf4.quantize_4bit(w, 64, "int4")
    err = (nf4.dequantize_4bit(q) - w).abs().view(-1, 64)
    assert torch.all(err <= q.absmax[:, None] / 14 + 1e-7)


# --- double quantization -----------------------------------------------------------------

@pytest.mark.parametrize("blocksize", [64, 256])
def test_double_quant_bit_exact_with_bnb_reference_kernel(real_weights, blocksize):
    for w in real_weights.values():
        packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=True)
        _, plain = F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4")
        q = nf4.quantize_4bit(w, blocksize, "nf4", double_quant=True)
        assert torch.equal(q.packed, packed) and q.absmax is None
        assert torch.equal(q.dq.offset, state.offset)
        codes, absmax2 = bnb_reference_blockwise(plain.absmax - state.offset, F.create_dynamic_map(), 256)
        assert torch.equal(q.dq.codes, codes) and torch.equal(q.dq.absmax2, absmax2)
        # and bnb's own dequantize_4bit, given our double-quantized state, returns our values
        state2 = F.QuantState(absmax=q.dq.absmax2, code=nf4.dynamic_code(), blocksize=256, dtype=torch.float32)
        ours_in_bnb = F.QuantState(absmax=q.dq.codes, shape=w.shape, code=nf4.nf4_code(), blocksize=blocksize,
                                   quant_type="nf4", dtype=w.dtype, offset=q.dq.offset, state2=state2)
        flat = F.dequantize_4bit(packed, F.QuantState(
            absmax=q.dq.codes, shape=torch.Size([w.numel()]), code=nf4.nf4_code(), blocksize=blocksize,
            quant_type="nf4", dtype=w.dtype, offset=q.dq.offset, state2=state2))
        assert ours_in_bnb.nested
        assert torch.equal(nf4.dequantize_4bit(q), flat.reshape(w.shape))


def test_double_quant_vs_bnb_native_cpu_kernel_nearly_nearest(real_weights):
    code = nf4.dynamic_code()
    for w in real_weights.values():
        _, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        _, plain = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
        dq = nf4.quantize_4bit(w, 64, "nf4", double_quant=True).dq
        assert torch.equal(dq.absmax2, state.state2.absmax) and torch.equal(dq.offset, state.offset)
        differ = dq.codes != state.absmax
        assert 0 < differ.float().mean() < 0.01
        normed = (plain.absmax - dq.offset) / dq.absmax2.repeat_interleave(256)[: plain.absmax.numel()]
        ours = (normed - code[dq.codes.long()]).abs()
        theirs = (normed - code[state.absmax.long()]).abs()
        assert torch.all(ours <= theirs), "ours is not the nearest level"
        excess = (theirs - ours).max().item()  # how much farther bnb's native pick is
        assert excess < 1e-4, f"bnb's native pick is {excess:.2e} farther than the nearest level"


def test_double_quant_decodes_close_to_fp32_absmax():
    w = torch.randn(1536, 576) * 0.05
    q = nf4.quantize_4bit(w, 64, "nf4", double_quant=True)
    _, absmax = nf4.quantize_blockwise(w, nf4.nf4_code(), 64)
    rel = ((nf4.block_absmax(q) - absmax).abs() / absmax).max()
    assert 0 < rel < 0.02


def test_constant_bits_per_parameter():
    assert nf4.constant_bits(64) == 0.5
    assert nf4.constant_bits(64, double_quant=True) == pytest.approx(8 / 64 + 32 / (64 * 256))
    assert round(nf4.constant_bits(64, double_quant=True), 3) == 0.127


def test_quant_state_bits_of_a_bnb_layer():
    for double_quant, expected in [(False, 0.5), (True, 0.127)]:
        layer = bnb.nn.Linear4bit(1024, 1024, compress_statistics=double_quant, quant_type="nf4")
        layer.load_state_dict(torch.nn.Linear(1024, 1024).state_dict())
        layer = layer.to("cpu")
        bits = nf4.quant_state_bits(layer)
        assert bits["params"] == 1024 * 1024 and bits["weight_bits"] == 4
        assert bits["constant_bits"] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="bits=4"):
        nf4.quant_state_bits(torch.nn.Linear(4, 4))


# --- on a model --------------------------------------------------------------------------

def test_fake_quantize_model_replaces_linear_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64))
    before = net[2].weight.detach().clone()
    errors = nf4.fake_quantize_model(net, "int4")
    assert list(errors) == ["0", "2"]
    assert torch.equal(net[2].weight, nf4.fake_quantize(before, "int4"))
    assert errors["2"] == nf4.error_stats(before, net[2].weight)
    assert not torch.equal(net[2].weight, before)


# --- bad input: ValueError with the fix --------------------------------------------------

@pytest.mark.parametrize("blocksize,msg", [(100, "not a power of two"), (96, "not a power of two"),
                                           (8192, "out of range"), (16, "out of range"),
                                           (0, "out of range"), (-64, "out of range"),
                                           (64.0, "out of range"), (True, "out of range")])
def test_bad_blocksize(blocksize, msg):
    with pytest.raises(ValueError, match=msg) as err:
        nf4.quantize_4bit(torch.randn(256), blocksize)
    assert "power of two from 32 to 4096" in str(err.value)


@pytest.mark.parametrize("w,msg", [(torch.empty(0), "empty"), (torch.empty(0, 64), "empty"),
                                   (torch.arange(64), "int64"), (torch.ones(64, dtype=torch.bool), "bool"),
                                   (torch.randn(64, dtype=torch.float64), "float64")])
def test_bad_tensor(w, msg):
    with pytest.raises(ValueError, match=msg):
        nf4.quantize_4bit(w)


def test_bad_quant_type_and_non_tensor():
    with pytest.raises(ValueError, match="nf4, fp4, int4"):
        nf4.quantize_4bit(torch.randn(64), 64, "int8")
    with pytest.raises(ValueError, match="torch.Tensor"):
        nf4.quantize_4bit([0.1, 0.2])
