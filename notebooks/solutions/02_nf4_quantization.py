"""Solutions to notebook 02's exercises (NF4 levels, the constants' bits, the absmax per block)."""
import torch


def my_nf4_levels(offset):
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())    # 8 positive quantiles
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())   # 7 negative quantiles
    levels = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).float().sort().values
    return levels / levels.max()                                               # (16,) in [-1, 1]


def my_constant_bits(blocksize, double_quant):
    if double_quant:       # an 8-bit absmax per block + one fp32 absmax per 256 blocks
        return 8 / blocksize + 32 / (blocksize * 256)
    return 32 / blocksize  # one fp32 absmax per block


def my_block_absmax(w, blocksize):
    flat = w.reshape(-1).abs()
    n_blocks = -(-flat.numel() // blocksize)                                   # ceil: the last block may be short
    padded = torch.nn.functional.pad(flat, (0, n_blocks * blocksize - flat.numel()))  # zeros never win a max of |w|
    return padded.view(n_blocks, blocksize).amax(dim=1)                        # (n_blocks,)
