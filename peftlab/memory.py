"""The one meter for bytes: storage, saved-for-backward activations, optimizer state, model footprint.

    training memory = footprint (weights) + gradients + optimizer state + activations (saved for backward)

Every count here is a count of *storages*: tensors that share memory (views, a tied
embedding/lm_head, one input saved by the q, k and v projections) are counted once, at the
size of the whole storage, because that is what the allocator holds. The four terms are the
ones the QLoRA paper adds up (Dettmers et al. 2023, arXiv:2305.14314, §3) and the ones the VRAM
estimator predicts; on a GPU their sum is what `torch.cuda.max_memory_allocated()` sees at the
peak of a step, less the temporaries of the kernels themselves.
"""
from __future__ import annotations

import weakref
from typing import Iterable

import torch
from torch import Tensor, nn

Tensors = Iterable[Tensor | None]


def _key(t: Tensor) -> tuple[str, int]:
    # (device, address) names a storage; addresses of different devices may coincide
    return str(t.device), t.untyped_storage().data_ptr()


def storage_bytes(tensors: Tensors) -> int:
    """Bytes of the distinct storages behind `tensors`; a view or a tied weight counts once.

    None entries (a parameter without `.grad`) are skipped.
    """
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"storage_bytes takes tensors, got a {type(t).__name__}: pass e.g. model.parameters()")
        seen[_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _quant_state_tensors(qs) -> list[Tensor]:
    """The tensors of a bitsandbytes QuantState, nested ones included: absmax, code, offset, state2."""
    out = []
    for v in vars(qs).values():
        if isinstance(v, Tensor):
            out.append(v)
        elif hasattr(v, "absmax"):  # state2: the double-quantization constants of the constants
            out += _quant_state_tensors(v)
    return out


def model_tensors(model: nn.Module) -> list[Tensor]:
    """Everything a model holds: parameters, buffers and the quant states of 4-bit weights."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module, got a {type(model).__name__}")
    out = [*model.parameters(), *model.buffers()]
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        out += _quant_state_tensors(qs) if qs is not None else []
    return out


def footprint_bytes(model: nn.Module) -> int:
    """Bytes a model holds: parameters + buffers, each storage once.

    A bitsandbytes 4-bit weight counts as what bitsandbytes stores: its packed uint8 bytes
    (two codes per byte) plus its quant state — absmax (fp32, or uint8 with double
    quantization, then + the fp32 absmax of the absmax and an fp32 offset) and the code tables
    (16 fp32 NF4/FP4 levels, + 256 fp32 dynamic-code entries when nested).
    """
    return storage_bytes(model_tensors(model))


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's state tensors, each storage once (a shared code table counts once).

    AdamW: two moments per trainable parameter in its dtype (8 B/param in fp32); bitsandbytes
    8-bit AdamW: two uint8 states + one fp32 absmax per 256 values each + two shared 256-entry
    tables (Dettmers et al. 2022, arXiv:2110.02861). 0-d tensors (AdamW's step count, on the
    CPU unless fused or capturable) are bookkeeping, not state, and are not counted. Empty
    before the first `step()`: optimizers allocate state lazily.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"expected a torch.optim.Optimizer (bitsandbytes' are ones), got {type(optimizer).__name__}")
    return storage_bytes(v for st in optimizer.state.values() for v in st.values()
                         if isinstance(v, Tensor) and v.dim() > 0)


class SavedTensorMeter:
    """Counts the activations: the bytes autograd holds for backward when backward starts.

        with memory.SavedTensorMeter(exclude=model) as saved:
            loss = model(**batch).loss        # the forward alone, or forward + backward: same count
            loss.backward()
        saved.bytes, saved.tensors            # unique storages, parameters excluded

    Definition. Every tensor autograd saves (torch.autograd.graph.saved_tensors_hooks) is
    tracked while the graph holds it, each storage once, and the live total is read when
    backward starts (the first unpack after a forward) or when the block exits, whichever
    comes first; `bytes` is the largest such reading in the block (one per backward with
    gradient accumulation). The tensors in `exclude` — pass the model: its parameters,
    buffers and 4-bit quant states — are the footprint, not activations.

    Why this one. It is the activation term of the VRAM estimator and the part of
    `max_memory_allocated()` that grows with batch × length: a training step peaks when
    backward begins, with everything saved for it alive and nothing freed yet. So it counts
    neither a graph branch that died in the forward (e.g. a norm used only detached, DoRA
    §4.3) nor a saved tensor the caller keeps alive elsewhere after autograd let go (both
    are not memory autograd keeps), and it does not depend on where the block ends, so a
    Trainer callback can wrap the whole step. Non-reentrant checkpointing recomputes a block
    under its own hooks: the meter sees the block inputs it keeps, not the recomputed block
    (the estimator counts that as a temporary).
    """

    def __init__(self, exclude: nn.Module | Tensors = ()) -> None:
        tensors = model_tensors(exclude) if isinstance(exclude, nn.Module) else list(exclude)
        if not all(isinstance(t, Tensor) for t in tensors):
            raise ValueError("exclude takes an nn.Module or tensors: pass the model being measured")
        self._skip = {_key(t) for t in tensors}
        self._refs: dict[tuple[str, int], int] = {}   # storage -> saved aliases alive
        self._size: dict[tuple[str, int], int] = {}   # storage -> bytes
        self._fresh = False                           # packed since the last reading
        self.live = 0                                 # bytes the graph holds right now
        self.bytes = 0                                # largest reading: the activations
        self.tensors = 0                              # storages at that reading
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: Tensor) -> Tensor:
        alias = t.detach()  # same storage; keeping t itself would tie a saved output to its own grad_fn
        key = _key(t)
        if key in self._skip:
            return alias
        if not self._refs.get(key):
            self._refs[key], self._size[key] = 0, t.untyped_storage().nbytes()
            self.live += self._size[key]
        self._refs[key] += 1
        weakref.finalize(alias, self._release, key).atexit = False  # the graph is the alias' only owner
        self._fresh = True
        return alias

    def _release(self, key: tuple[str, int]) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._size.pop(key)

    def _read(self) -> None:
        if self._fresh and self.live >= self.bytes:
            self.bytes, self.tensors = self.live, len(self._refs)
        self._fresh = False

    def _unpack(self, alias: Tensor) -> Tensor:
        self._read()  # the first unpack after a forward: backward has started, nothing freed yet
        return alias

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._read()


def rss_bytes(peak: bool = False) -> int:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM); 0 off Linux.

    On CPU it includes allocator caches and libraries: measured, noisier than the counts above.
    """
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
