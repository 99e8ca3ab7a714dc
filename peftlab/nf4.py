"""NF4 from scratch: the NormalFloat code, blockwise absmax quantization, 4-bit packing and
double quantization, with Int4 and FP4 baselines — bit for bit what bitsandbytes stores.

    q_i = argmin_j |w_i / absmax_b − c_j|,   ŵ_i = c_{q_i} · absmax_b,   absmax_b = max_{i∈b} |w_i|

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) §3. NF4's 16 levels c_j are quantiles of N(0, 1)
scaled to [−1, 1], so a normally distributed block fills every level equally often. Double
quantization (§3) quantizes the fp32 absmax (one per 64 weights: 32/64 = 0.5 bit/param) again
to 8 bits in blocks of 256: 8/64 + 32/(64·256) ≈ 0.127 bit/param.

Layout as in bitsandbytes: the tensor is flattened and cut into blocks of `blocksize` values
(the last block may be shorter); two 4-bit codes per byte, the first in the high nibble.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NF4_OFFSET = 0.9677083  # ½((1 − 1/30) + (1 − 1/32)) = 0.96770833…, rounded as bitsandbytes has it
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes accepts
QUANT_TYPES = ("nf4", "fp4", "int4")
DQ_BLOCKSIZE = 256  # second-level block size of double quantization (QLoRA §3, bitsandbytes)


def nf4_code(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, sorted, in [−1, 1] (bitsandbytes `create_normal_map`).

    Quantiles at evenly spaced probabilities from `offset` down to 0.5: 8 for the positive half
    and 7 for the negative half, plus an exact zero (asymmetric, so 0 is representable). The
    outermost probability is not 1 (Φ⁻¹(1) = ∞): offset is the mean of 1 − 1/(2·15) and
    1 − 1/(2·16), the centres of the last bins when 15 or 16 bins split the probability mass.
    """
    # Code tables are built on the CPU; the (de)quantizers move them to the input's device.
    probs_pos = torch.linspace(offset, 0.5, 9, device="cpu")[:-1]  # float32 like bitsandbytes, 0.5 dropped
    probs_neg = torch.linspace(offset, 0.5, 8, device="cpu")[:-1]
    pos = torch.special.ndtri(probs_pos.double())  # Φ⁻¹, the normal quantile function
    neg = -torch.special.ndtri(probs_neg.double())
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64, device="cpu"), pos]).float().sort().values
    return levels / levels.max()  # (16,), c_0 = −1, c_7 = 0, c_15 = 1


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit), indexed by bit pattern s e1 e0 m.

    Exponent field e = 0 is subnormal (m · 2⁻⁴); e = 1, 2, 3 give 2^(4−e) · (1 + m/2) — the
    field runs backwards in bitsandbytes' layout. Max |value| 12 → scaled to 1.
    """
    vals = []
    for bits in range(16):
        s, e, m = bits >> 3, (bits >> 1) & 3, bits & 1
        mag = m * 2.0 ** -4 if e == 0 else 2.0 ** (4 - e) * (1 + m / 2)
        vals.append(-mag if s else mag)
    code = torch.tensor(vals, device="cpu")
    return code / code.abs().max()


def int4_code() -> torch.Tensor:
    """Symmetric integer levels k/7, k = −7…7 (sign-magnitude: pattern s mmm; 0 appears twice)."""
    return torch.tensor([(-1.0) ** (b >> 3) * (b & 7) / 7 for b in range(16)], device="cpu")


def dynamic_code() -> torch.Tensor:
    """The 8-bit dynamic code that double quantization uses (bitsandbytes `create_dynamic_map`).

    Dettmers 2015 (arXiv:1511.04561): for each decade 10^(i−6), i = 0…6, 2^i linear levels
    (midpoints of an even split of [0.1, 1]), both signs, plus 0 and 1: 256 sorted values.
    """
    data = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32, device="cpu")
        means = (edges[:-1] + edges[1:]) / 2.0
        data += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()
    return torch.tensor(sorted(data), dtype=torch.float32, device="cpu")  # (256,)


def code_for(quant_type: str) -> torch.Tensor:
    if quant_type not in QUANT_TYPES:
        raise ValueError(f"quant_type must be one of {', '.join(QUANT_TYPES)}, got {quant_type!r}")
    return {"nf4": nf4_code, "fp4": fp4_code, "int4": int4_code}[quant_type]()


def check_input(x: torch.Tensor, blocksize: int, sizes=BLOCKSIZES) -> None:
    """ValueError (with the fix) for a block size bitsandbytes rejects, an empty or non-float tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"cannot quantize a {x.dtype} tensor: pass float32, bfloat16 or float16 "
                         "weights (e.g. w.float())")
    if x.numel() == 0:
        raise ValueError("cannot quantize an empty tensor: pass a weight with at least one value")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in sizes:
        hint = ("it is not a power of two" if isinstance(blocksize, int) and blocksize > 0
                and blocksize & (blocksize - 1) else "it is out of range")
        raise ValueError(f"block size {blocksize!r} is not allowed ({hint}): use a power of two "
                         f"from {sizes[0]} to {sizes[-1]}, e.g. 64 (QLoRA's choice)")


def _scale_blocks(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """flat (n,) fp32 → (w/absmax clamped to [−1, 1] (n,), absmax (n_blocks,)), as bitsandbytes."""
    n = flat.numel()
    full = n - n % blocksize
    head = flat[:full].view(-1, blocksize)                       # (full/bs, bs)
    absmax = head.abs().amax(dim=1)                              # (full/bs,)
    scaled = (head * (1.0 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1).reshape(-1)
    if full < n:  # the short last block: bitsandbytes divides here (and stores the clamped max)
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max[None]])
        scaled = torch.cat([scaled, (flat[full:] / tail_max).clamp(-1, 1)])
    return scaled, absmax


def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest level for each value (ties to the lower level), as uint8."""
    code = code.to(scaled.device)
    order = torch.argsort(code)  # FP4/Int4 are in bit-pattern order, not sorted
    levels = code[order]
    mids = (levels[:-1] + levels[1:]) / 2  # decision boundaries, fp32 like bitsandbytes
    if len(mids) > 15:  # the 256-level code of double quantization: binary search
        return order[torch.bucketize(scaled, mids)].to(torch.uint8)
    rank = torch.zeros(scaled.shape, dtype=torch.uint8, device=scaled.device)  # rank = #{j : x > mid_j}: 15 cheap passes
    for m in mids:
        rank.add_(scaled.gt(m))
    return order.to(torch.uint8)[rank.long()] if not torch.equal(order, torch.arange(16, device=order.device)) else rank


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantization of the flattened x onto `code`: (indices (n,) uint8, absmax fp32)."""
    scaled, absmax = _scale_blocks(x.reshape(-1).float(), blocksize)
    return nearest_code(scaled, code), absmax


def dequantize_blockwise(idx: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                         blocksize: int) -> torch.Tensor:
    """code[idx] · absmax of each value's block, in fp32 (n,)."""
    vals = code.to(idx.device)[idx.reshape(-1).long()]           # (n,)
    n = vals.numel()
    full = n - n % blocksize
    out = torch.empty(n, dtype=torch.float32, device=vals.device)
    out[:full] = (vals[:full].view(-1, blocksize) * absmax[: full // blocksize, None]).reshape(-1)
    out[full:] = vals[full:] * absmax[-1]
    return out


def pack_4bit(idx: torch.Tensor) -> torch.Tensor:
    """(n,) codes < 16 → (ceil(n/2), 1) uint8, first code in the high nibble (bitsandbytes layout)."""
    idx = idx.reshape(-1).to(torch.uint8)
    if idx.numel() % 2:
        raise ValueError("pack_4bit needs an even number of codes: pad with the code of 0.0")
    return ((idx[0::2] << 4) | idx[1::2]).unsqueeze(1)


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_4bit: (ceil(n/2), 1) uint8 → the first n codes (n,) uint8."""
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


@dataclass(frozen=True)
class DoubleQuant:
    codes: torch.Tensor    # (n_blocks,) uint8: absmax − offset on the 8-bit dynamic code
    absmax2: torch.Tensor  # (ceil(n_blocks/256),) fp32: second-level absmax
    offset: torch.Tensor   # () fp32: mean of the first-level absmax, subtracted before quantizing
    blocksize: int = DQ_BLOCKSIZE


@dataclass(frozen=True)
class Quant4:
    packed: torch.Tensor        # (ceil(n/2), 1) uint8: two 4-bit codes per byte
    absmax: torch.Tensor | None  # (n_blocks,) fp32 per-block absmax (None when double-quantized)
    shape: torch.Size           # the weight's shape
    dtype: torch.dtype          # the weight's dtype: dequantize_4bit returns it
    blocksize: int              # weights per absmax
    quant_type: str             # "nf4", "fp4" or "int4"
    dq: DoubleQuant | None = None  # the quantized absmax (double quantization)


def double_quantize(absmax: torch.Tensor, blocksize: int = DQ_BLOCKSIZE) -> DoubleQuant:
    """Quantize the fp32 absmax constants to 8 bits (bitsandbytes `compress_statistics`)."""
    offset = absmax.mean()  # absmax > 0: centring uses the signed code's full range
    codes, absmax2 = quantize_blockwise(absmax - offset, dynamic_code(), blocksize)
    return DoubleQuant(codes, absmax2, offset, blocksize)


def double_dequantize(dq: DoubleQuant) -> torch.Tensor:
    return dequantize_blockwise(dq.codes, dq.absmax2, dynamic_code(), dq.blocksize) + dq.offset


def quantize_4bit(w: torch.Tensor, blocksize: int = 64, quant_type: str = "nf4",
                  double_quant: bool = False) -> Quant4:
    """Quantize w (any shape; fp32/bf16/fp16) to 4 bits per value plus per-block constants."""
    check_input(w, blocksize)
    code = code_for(quant_type)
    scaled, absmax = _scale_blocks(w.reshape(-1).float(), blocksize)
    if scaled.numel() % 2:  # odd count: bitsandbytes pads with 0.0, stored as the code of zero
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    packed = pack_4bit(nearest_code(scaled, code))
    if double_quant:
        return Quant4(packed, None, w.shape, w.dtype, blocksize, quant_type, double_quantize(absmax))
    return Quant4(packed, absmax, w.shape, w.dtype, blocksize, quant_type)


def block_absmax(q: Quant4) -> torch.Tensor:
    """The fp32 absmax the dequantizer multiplies by (decoded first when double-quantized)."""
    return q.absmax if q.dq is None else double_dequantize(q.dq)


def dequantize_4bit(q: Quant4) -> torch.Tensor:
    """ŵ = code[q] · absmax, computed in fp32, returned in the weight's shape and dtype."""
    n = math.prod(q.shape)
    idx = unpack_4bit(q.packed, n)
    out = dequantize_blockwise(idx, block_absmax(q), code_for(q.quant_type), q.blocksize)
    return out.reshape(q.shape).to(q.dtype)


def fake_quantize(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64,
                  double_quant: bool = False) -> torch.Tensor:
    """dequantize(quantize(w)): the weight a 4-bit model computes with, in w's dtype.

    Same values as dequantize_4bit(quantize_4bit(...)), without packing the codes.
    """
    check_input(w, blocksize)
    code = code_for(quant_type)
    idx, absmax = quantize_blockwise(w, code, blocksize)
    if double_quant:
        absmax = double_dequantize(double_quantize(absmax))
    return dequantize_blockwise(idx, absmax, code, blocksize).view(w.shape).to(w.dtype)


def constant_bits(blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = DQ_BLOCKSIZE) -> float:
    """Bits per parameter spent on quantization constants (QLoRA §3): 32/64 = 0.5, DQ ≈ 0.127."""
    return 8 / blocksize + 32 / (blocksize * dq_blocksize) if double_quant else 32 / blocksize


def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    """Mean absolute error, RMSE and relative error ‖w − ŵ‖/‖w‖ of a quantized weight."""
    d = (w.float() - w_hat.float()).reshape(-1)
    return {"mae": d.abs().mean().item(), "rmse": d.pow(2).mean().sqrt().item(),
            "rel": (d.norm() / w.float().norm().clamp(min=1e-30)).item()}


# --- on a model ----------------------------------------------------------------------------

def fake_quantize_model(model: nn.Module, quant_type: str = "nf4", blocksize: int = 64,
                        double_quant: bool = False) -> dict[str, dict[str, float]]:
    """Replace every nn.Linear weight except the output head by its 4-bit round trip, in place.

    The same layers transformers' BitsAndBytesConfig quantizes. Returns {layer: error_stats}.
    """
    head = getattr(model, "get_output_embeddings", lambda: None)()
    errors = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and mod is not head:
                w_hat = fake_quantize(mod.weight, quant_type, blocksize, double_quant)
                errors[name] = error_stats(mod.weight, w_hat)
                mod.weight.copy_(w_hat)
    return errors


def quant_state_bits(model: nn.Module) -> dict[str, float]:
    """Measure what a loaded bitsandbytes 4-bit model stores per quantized parameter.

    Reads each 4-bit weight's `quant_state`: the absmax tensor (fp32, or uint8 when nested),
    the nested fp32 absmax2 and offset, and the code tables (16 fp32 + 256 fp32 when nested).
    """
    params = weight_bits = const_bits = table_bits = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is None:
            continue
        params += math.prod(qs.shape)
        weight_bits += p.numel() * p.element_size() * 8
        const_bits += qs.absmax.numel() * qs.absmax.element_size() * 8
        table_bits += qs.code.numel() * qs.code.element_size() * 8
        if getattr(qs, "nested", False):
            const_bits += qs.state2.absmax.numel() * qs.state2.absmax.element_size() * 8 + 32
            table_bits += qs.state2.code.numel() * qs.state2.code.element_size() * 8
    if params == 0:
        raise ValueError("no 4-bit weights found: load the model with models.load_model(bits=4)")
    return {"params": params, "weight_bits": weight_bits / params,
            "constant_bits": const_bits / params, "table_bits": table_bits / params}
