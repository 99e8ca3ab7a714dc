"""Notebook 02's exercises: the NF4 levels, the bits the constants cost, the absmax of each block.

    c = sort(Φ⁻¹(p₊) ∪ {0} ∪ −Φ⁻¹(p₋)) / max      bits = 32/b  or  8/b + 32/(b·256)      absmax_k = max_{i∈k} |w_i|

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) §3, in bitsandbytes' layout (the flattened tensor cut
into blocks of b, the last block shorter). The references are `peftlab.nf4`'s.
Solutions: notebooks/solutions/02_nf4_quantization.py.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import nf4
from ._verdict import call, cases, close, exercise, report, verdict

NOTEBOOK = "02_nf4_quantization"


def _levels(offset: float, n_pos: int, n_neg: int, zero: bool = True, norm: bool = True) -> torch.Tensor:
    """Variants of NF4's construction, for naming mistakes: n_pos positive, n_neg negative levels."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, n_pos + 1)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, n_neg + 1)[:-1].double())
    parts = [neg] + ([torch.zeros(1, dtype=torch.float64)] if zero else []) + [pos]
    v = torch.cat(parts).float().sort().values
    return v / v.max() if norm else v


@exercise(NOTEBOOK, "my_nf4_levels")
def check_nf4_levels(fn: Callable[[float], torch.Tensor]) -> bool:
    """Exercise 1: `fn(offset)` returns the 16 NF4 levels, sorted, in [−1, 1] (`nf4.nf4_code(offset)`)."""
    for offset in (nf4.NF4_OFFSET, 0.99):
        got, why = call(fn, (offset,), "torch.special.ndtri takes probabilities in (0, 1), e.g. "
                        "torch.linspace(offset, 0.5, 9)[:-1]")
        if why:
            return report(f"fn({offset}) {why}", "")
        ref = nf4.nf4_code(offset)
        if isinstance(got, torch.Tensor) and got.shape == ref.shape and not close(got, ref) \
                and close(got.flatten().sort().values, ref):
            return report("the right 16 values in the wrong order: sort them ascending (.sort().values), "
                          "so the index of a level is its 4-bit code", "")
        pos17 = torch.special.ndtri(torch.linspace(offset, 0.5, 9).double())          # 0.5 kept: Φ⁻¹ = 0
        with_half = torch.cat([-torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()),
                               torch.zeros(1, dtype=torch.float64), pos17]).float().sort().values
        mistakes = {
            "divide by the largest level, so the code spans [−1, 1]": _levels(offset, 8, 7, norm=False),
            "NF4 is asymmetric: 8 positive levels, 7 negative and an exact 0 (your 8 + 8 has no zero); "
            "the negative half is −Φ⁻¹(linspace(offset, 0.5, 8)[:-1])": _levels(offset, 8, 8, zero=False),
            "the halves are swapped: bitsandbytes has 8 *positive* levels and 7 negative ones":
                _levels(offset, 7, 8),
            "Φ⁻¹(0.5) = 0 is in twice: drop 0.5 from the probabilities (linspace(...)[:-1]) — the zero is "
            "added once, by hand": with_half / with_half.max(),
        }
        if offset != nf4.NF4_OFFSET:
            mistakes["the levels do not change with `offset`: use the argument, not a constant"] = nf4.nf4_code()
        why = verdict(got, ref, mistakes, "16 sorted levels")
        if why:
            return report(f"for offset={offset}: {why}", "")
    return report(None, "the 16 NF4 levels (= bitsandbytes' table at offset 0.9677083, and for another offset)")


_BITS_INPUTS = [(64, False), (64, True), (256, True), (128, False), (32, True)]


@exercise(NOTEBOOK, "my_constant_bits")
def check_constant_bits(fn: Callable[[int, bool], float]) -> bool:
    """Exercise 2: `fn(blocksize, double_quant)` = bits per parameter the absmax constants cost
    (`nf4.constant_bits`): 32/b, or with double quantization 8/b + 32/(b·256)."""
    got = []
    for b, dq in _BITS_INPUTS:
        out, why = call(fn, (b, dq), "return a float: bits of constants per weight")
        if why:
            return report(f"fn({b}, {dq}) {why}", "")
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if isinstance(out, bool) or not isinstance(out, (int, float)) or not math.isfinite(out):
            return report(f"fn({b}, {dq}) returned {out!r}: return a float (bits per parameter)", "")
        got.append(float(out))
    ref = [nf4.constant_bits(b, double_quant=dq) for b, dq in _BITS_INPUTS]
    wrong = {
        "the second-level constants are missing: with double quantization 256 8-bit absmax share one "
        "fp32 absmax, + 32 / (blocksize · 256)": lambda b, dq: 8 / b if dq else 32 / b,
        "the fp32 second-level absmax covers 256 *blocks* = 256 · blocksize weights: "
        "32 / (blocksize · 256), not 32 / 256": lambda b, dq: 8 / b + 32 / 256 if dq else 32 / b,
        "double_quant is ignored: with it each absmax is stored in 8 bits, not 32": lambda b, dq: 32 / b,
        "that is bytes, not bits: one fp32 absmax is 32 bits": lambda b, dq: nf4.constant_bits(b, dq) / 8,
        "count only the constants: the 4 bits of the weight itself are not part of it":
            lambda b, dq: 4 + nf4.constant_bits(b, dq),
        "the first-level absmax is fp32 (32 bits), not 16": lambda b, dq: 8 / b + 32 / (b * 256) if dq else 16 / b,
        "the cost must fall as the block grows: one constant per `blocksize` weights": lambda b, dq: (
            nf4.constant_bits(64, dq)),
    }
    why = cases(got, ref, [f"fn({b}, {dq})" for b, dq in _BITS_INPUTS],
                {h: [f(b, dq) for b, dq in _BITS_INPUTS] for h, f in wrong.items()}, rtol=1e-6)
    return report(why, "0.5 bit/param at blocksize 64, 0.127 with double quantization (8/64 + 32/(64·256))")


@exercise(NOTEBOOK, "my_block_absmax")
def check_block_absmax(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """Exercise 3: `fn(w, blocksize)` = max |w| of each block of the *flattened* w, the last block
    shorter when blocksize does not divide w.numel() (shape (ceil(numel / blocksize),))."""
    w = torch.randn(5, 52, generator=torch.Generator().manual_seed(2))     # 260 values: 4 blocks of 64 + 4
    w[4, -1] = -9.0                                                        # the last block's absmax is negative
    for b in (64, 32):
        flat = w.reshape(-1)
        ref = nf4.quantize_4bit(w, b, "nf4").absmax                       # (ceil(260 / b),)
        full = flat[: flat.numel() // b * b].reshape(-1, b)
        mistakes = {
            f"off by one block: {w.numel()} values make ceil({w.numel()}/{b}) = {ref.numel()} blocks; the last, "
            f"shorter block ({w.numel() % b} values) needs its own absmax": full.abs().amax(dim=1),
            "take the absolute value first: absmax = max |w|, so a large negative weight counts": torch.cat(
                [full.amax(dim=1), flat[full.numel():].amax().view(1)]),
            "blocks run over the *flattened* tensor (w.reshape(-1)), not over rows: a row of 52 values is "
            "not a block": w.abs().amax(dim=1),
            "blocks run over the flattened tensor, not over columns": w.abs().amax(dim=0),
            "one absmax for the whole tensor: cut it into blocks of `blocksize` first": w.abs().max().view(1),
        }
        got, why = call(fn, (w.clone(), b), "flatten with w.reshape(-1), then cut into blocks of blocksize")
        why = why or verdict(got, ref, mistakes, "(number of blocks,)")
        if why:
            return report(f"blocksize {b}: {why}", "")
    return report(None, "one absmax per block of the flattened tensor, the shorter last block included "
                        "(= peftlab.nf4 = bitsandbytes)")
