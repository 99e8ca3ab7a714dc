"""The one meter for bytes (peftlab.memory) compared with numbers known in advance.

Compared: storage bytes with views and tied weights (counted once); the footprint of a
bitsandbytes 4-bit layer and of the embedded model in 4-bit with the byte counts bitsandbytes'
layout implies (packed codes, absmax, nested constants, code tables); optimizer state with
2 × 4 B per parameter for AdamW and the 8-bit layout for bitsandbytes' AdamW8bit; the
saved-tensor meter with the tensors a forward is known to save — and, on one graph, with the
three meters the kit used to have, which disagree, while the kit's gives the value it teaches.
"""
from __future__ import annotations

import gc
import math
import weakref
from contextlib import contextmanager

import pytest
import torch
import transformers
from torch import nn

from peftlab import memory, models

bnb = models.import_bitsandbytes()


# --- storage bytes and footprint --------------------------------------------------------------

def test_storage_bytes_counts_views_and_ties_once():
    x = torch.zeros(10, 4)                                  # 160 B
    assert memory.storage_bytes([x, x[:2], x.t(), x.view(-1)]) == 160  # a view holds the whole storage
    assert memory.storage_bytes([x, torch.zeros(3, dtype=torch.bfloat16), None]) == 166
    emb, head = nn.Embedding(50, 8), nn.Linear(8, 50, bias=False)
    head.weight = emb.weight                                # tied, as in SmolLM2's lm_head
    assert memory.footprint_bytes(nn.ModuleList([emb, head])) == 50 * 8 * 4
    head2 = nn.Linear(8, 50, bias=False)
    head2.weight = nn.Parameter(emb.weight.data)            # a second Parameter on the same storage
    assert memory.storage_bytes([emb.weight, head2.weight]) == 50 * 8 * 4
    with pytest.raises(ValueError, match="tensors"):
        memory.storage_bytes([1.0])


def _linear4bit(double_quant: bool) -> nn.Module:
    torch.manual_seed(0)
    q = bnb.nn.Linear4bit(128, 64, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=double_quant)
    q.load_state_dict(nn.Linear(128, 64).state_dict())
    return q.to("cpu")                                      # quantizes


def _nf4_bytes(n: int, double_quant: bool) -> int:
    """What bitsandbytes stores for n weights in NF4, blocks of 64 (QLoRA §3)."""
    blocks = n // 64
    if not double_quant:                                    # codes + fp32 absmax + 16-level table
        return n // 2 + 4 * blocks + 16 * 4
    # codes + uint8 absmax + fp32 absmax per 256 of them + fp32 offset + 16 + 256 fp32 tables
    return n // 2 + blocks + 4 * math.ceil(blocks / 256) + 4 + 16 * 4 + 256 * 4


@pytest.mark.parametrize("double_quant", [False, True])
def test_footprint_of_a_4bit_layer(double_quant):
    q = _linear4bit(double_quant)
    assert memory.footprint_bytes(q) == _nf4_bytes(128 * 64, double_quant) + 64 * 4  # + fp32 bias


def test_footprint_of_the_embedded_model_in_4bit(embedded_ready):
    model = models.load_model(bits=4, dtype=torch.bfloat16)  # NF4 + double quantization
    c = model.config
    h, i, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q k v o gate up down
    linear = c.num_hidden_layers * sum(_nf4_bytes(o * n, True) for o, n in shapes)
    dense = c.vocab_size * h * 2 + (2 * c.num_hidden_layers + 1) * h * 2  # tied embedding, RMSNorms, bf16
    n_rope = 2 if int(transformers.__version__.split(".")[0]) >= 5 else 1  # original_inv_freq: a buffer from 5
    rope = n_rope * (c.head_dim // 2) * 4                    # inv_freq (and original_inv_freq), fp32
    assert memory.footprint_bytes(model) == linear + dense + rope


# --- optimizer state --------------------------------------------------------------------------

def _params():
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(64, 128)), nn.Parameter(torch.randn(4103))]  # ≥ 4096: 8-bit state
    for p in ps:
        p.grad = torch.randn_like(p)
    return ps


def test_optimizer_bytes_adamw_is_two_fp32_moments():
    ps = _params()
    opt = torch.optim.AdamW(ps, lr=1e-3)
    assert memory.optimizer_bytes(opt) == 0                  # state is allocated at the first step
    opt.step()
    assert memory.optimizer_bytes(opt) == 2 * memory.storage_bytes(ps)  # exp_avg, exp_avg_sq; not `step`


def test_optimizer_bytes_adamw8bit():
    ps = _params()
    opt = bnb.optim.AdamW8bit(ps, lr=1e-3)
    opt.step()
    n = [p.numel() for p in ps]
    states = sum(2 * k + 2 * 4 * math.ceil(k / 256) for k in n)  # two uint8 states + fp32 absmax per 256
    assert memory.optimizer_bytes(opt) == states + 2 * 256 * 4     # + the two code tables, shared once
    with pytest.raises(ValueError, match="Optimizer"):
        memory.optimizer_bytes(ps)


# --- the saved-tensor meter -------------------------------------------------------------------

def test_meter_counts_each_saved_storage_once_and_skips_the_model():
    lin = nn.Linear(8, 8, bias=False)
    lin.register_buffer("scale", torch.ones(8))
    x = torch.randn(4, 8, requires_grad=True)
    with memory.SavedTensorMeter(exclude=lin) as saved:
        a = lin(x) * lin.scale                              # saves x (input) and the buffer (excluded)
        b = x @ lin.weight.t()                              # saves x again and a view of the weight
        c = x[:2].sin()                                     # saves a view of x
    assert (saved.bytes, saved.tensors) == (x.nbytes, 1)
    (a + b).sum().add(c.sum()).backward()
    with pytest.raises(ValueError, match="nn.Module or tensors"):
        memory.SavedTensorMeter(exclude=[lin])


def test_meter_reads_at_the_start_of_backward_in_any_window():
    w = nn.Parameter(torch.randn(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    with memory.SavedTensorMeter(exclude=[w]) as fwd:       # the forward alone
        loss = (x @ w).tanh().sum()
    loss.backward()
    with memory.SavedTensorMeter(exclude=[w]) as step:      # forward + backward, twice (grad accumulation)
        for k in (1, 2):
            (torch.cat([x] * k) @ w).tanh().sum().backward()
    assert fwd.bytes == 4 * 8 * 4 + 4 * 8 * 4               # x (for the matmul) + tanh's output
    assert step.bytes == 2 * fwd.bytes and step.live == 0   # the larger micro-batch; all freed after


# The three meters the kit had before peftlab.memory, replicated as they were written:
@contextmanager
def _alive_at_exit(skip):
    """dora.saved_tensor_bytes: saved aliases still held by the graph when the block exits."""
    saved, box = [], {}

    def pack(t):
        a = t.detach()
        if t.untyped_storage().data_ptr() not in skip:
            saved.append((weakref.ref(a), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        return a
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box
    box["bytes"] = sum({p: n for r, p, n in saved if r() is not None}.values())


@contextmanager
def _alive_after_gc(skip):
    """vram_measure._step: saved tensors themselves still alive after the forward and a gc."""
    refs, box = [], {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            refs.append(weakref.ref(t))
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box
    gc.collect()
    alive = [t for t in (r() for r in refs) if t is not None]
    box["bytes"] = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in alive}.values())


@contextmanager
def _all_packed(skip):
    """showdown.MemoryMeter: every storage packed between step begin and step end."""
    seen, box = {}, {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box
    box["bytes"] = sum(seen.values())


def test_one_meter_where_the_old_three_disagreed():
    """The kit teaches: activations = what autograd holds for backward when backward starts.

    That is the estimator's activation term and the batch-dependent part of the peak that
    max_memory_allocated() reports: a step peaks as backward begins, when every saved tensor is
    alive and none is freed yet. The forward below keeps x and tanh's output for backward (256 B)
    and also runs two branches that die in the forward: one saved a tensor the caller keeps
    alive anyway (`keep`, 2048 B: x * keep saves keep), one saved a temporary (a repeated x that
    sin saves, 1024 B). Neither is memory autograd keeps. The old meters said 256 (alive at
    exit — right only if the block ends where the forward ends: 0 around a whole step), 2304
    (alive after gc — counts `keep`) and 3328 (all packed — counts both branches).
    """
    w = nn.Parameter(torch.randn(8, 8))
    keep = torch.randn(16, 4, 8)                            # held by the caller, e.g. a cached mask
    skip = {w.untyped_storage().data_ptr()}

    def forward(x):
        y = (x @ w).tanh()                                  # saves x and y: 128 + 128 B, held for backward
        _ = (x * keep).detach()                             # saves keep (2048 B); the branch dies here
        x.repeat(8, 1).sin().sum().item()                   # saves the repeated x (1024 B); dies here
        return y.sum()

    def run(meter, whole_step: bool) -> int:
        x = torch.randn(4, 8, requires_grad=True)
        with meter as m:
            loss = forward(x)
            if whole_step:
                loss.backward()
        if not whole_step:
            loss.backward()
        return m if isinstance(m, int) else (m.bytes if hasattr(m, "bytes") else m["bytes"])

    old = {"alive at exit": run(_alive_at_exit(skip), False),
           "alive at exit, whole step": run(_alive_at_exit(skip), True),
           "alive after gc": run(_alive_after_gc(skip), False),
           "all packed, whole step": run(_all_packed(skip), True)}
    assert old == {"alive at exit": 256, "alive at exit, whole step": 0, "alive after gc": 2304,
                   "all packed, whole step": 3328}
    assert len(set(old.values())) == len(old)               # four windows/definitions, four answers
    taught = 4 * 8 * 4 * 2                                  # x + tanh(x @ w), fp32
    assert run(memory.SavedTensorMeter(exclude=[w]), False) == taught
    assert run(memory.SavedTensorMeter(exclude=[w]), True) == taught


def test_meter_does_not_keep_a_dead_branch_alive():
    """A pack hook that returns the saved tensor itself ties a saved *output* to its own grad_fn:
    a cycle through C++ that gc cannot break, so the old meters (and the memory) kept every
    output a dead branch saved. The kit's meter hands autograd a detached alias instead."""
    x = torch.randn(4, 8, requires_grad=True)
    refs = []
    for meter in (_all_packed(set()), memory.SavedTensorMeter()):
        with meter as saved:
            out = x.repeat(8, 1).exp()                      # exp saves its output
            refs.append(weakref.ref(out))
            del out
        gc.collect()
    assert refs[0]() is not None                            # the old hook: leaked
    assert refs[1]() is None and saved.live == 0 and saved.bytes == 0


# --- resident memory --------------------------------------------------------------------------

def test_rss():
    if memory.rss_bytes() == 0:
        pytest.skip("no /proc/self/status here (not Linux)")
    memory.reset_peak_rss()
    assert memory.rss_bytes(peak=True) >= memory.rss_bytes() > 0
