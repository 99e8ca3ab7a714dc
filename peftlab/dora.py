"""DoRA from scratch: split a weight into magnitude and direction, put LoRA on the direction.

    W' = m · (W + s·BA) / ‖W + s·BA‖_c      m ∈ R^out,  ‖·‖_c = L2 norm of each OUTPUT row of W (out, in)

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353.
The paper writes W as (d, k) and multiplies x·W, so its "column-wise" norm is one
norm per output neuron; in PyTorch's and PEFT's (out, in) layout that is one norm
per ROW (dim=1). A norm per input column (dim=0) is a common from-scratch mistake;
`WrongAxisDoRALinear` keeps it, on purpose, so a lesson can watch it fail.

`DoRALinear` subclasses `lora.LoRALinear` (same A, B, scaling, validation) and adds
the magnitude `lora_magnitude_vector` (out,), so a PEFT `use_dora=True` layer copies
into it by state dict. The second half measures the paper's ΔM and ΔD (§2.2) between
weight states; what the §4.3 norm detach saves is counted with `memory.SavedTensorMeter`.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import TrainerCallback

from peftlab import lora


def row_norm(W: Tensor) -> Tensor:
    """‖W‖_c: one L2 norm per output row of W (out, in) -> (out,), the DoRA magnitude."""
    if W.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(W.shape)}")
    return torch.linalg.norm(W, dim=1).to(W.dtype)


def decompose(W: Tensor) -> tuple[Tensor, Tensor]:
    """W (out, in) -> (m (out,), W/‖W‖_c (out, in) with unit rows); m[:, None] * V == W."""
    m = row_norm(W)
    return m, W / m[:, None]


def dora_weight(W: Tensor, delta: Tensor, m: Tensor, norm_dim: int = 1) -> Tensor:
    """The merged DoRA weight m · (W + ΔW) / ‖W + ΔW‖, the norm taken over `norm_dim`.

    norm_dim=1 (one norm per output row, m: (out,)) is DoRA; norm_dim=0 (per input column,
    m: (in,)) is the wrong axis. Gradients flow through the norm here (no §4.3 detach).
    """
    V = W + delta                                            # (out, in)
    norm = torch.linalg.norm(V, dim=norm_dim, keepdim=True)  # (out, 1) or (1, in)
    return m.view(norm.shape) * V / norm


class DoRALinear(lora.LoRALinear):
    """A frozen nn.Linear + LoRA (A, B) on the direction + a trainable magnitude per output row.

    `detach_norm=True` treats ‖W + sBA‖_c as a constant in backward (paper §4.3), as PEFT
    does; False keeps the full gradient (the lesson measures what that costs and changes).
    """

    norm_dim = 1  # one norm per output row of (out, in)

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_dtype: torch.dtype | None = None,
                 detach_norm: bool = True) -> None:
        # LoRALinear validates base, r and dropout (the same messages as LoRA) and builds A, B
        super().__init__(base, r, alpha, dropout=dropout, use_rslora=use_rslora, adapter_dtype=adapter_dtype)
        if not base.weight.dtype.is_floating_point:  # e.g. bitsandbytes Linear4bit (an nn.Linear subclass)
            raise ValueError("DoRALinear needs a dense floating-point base weight to take its norm; for "
                             "QDoRA use PEFT's use_dora=True on a 4-bit model (peftlab.train method='qdora')")
        self.detach_norm = detach_norm
        with torch.no_grad():  # m starts at ‖W + sBA‖_c, so W' == W + sBA at initialisation
            m = self.weight_norm().detach().clone()
        self.lora_magnitude_vector = nn.Parameter(m.to(self.lora_A.weight.dtype))  # (out,)

    def weight_norm(self) -> Tensor:
        """‖W + s·BA‖_c, one value per output row (out,); detached when `detach_norm`."""
        dtype = self.lora_A.weight.dtype                      # the adapter's dtype, as PEFT computes it
        W = self.base.weight.to(dtype)                        # (out, in), frozen
        lora_w = self.lora_B.weight @ self.lora_A.weight      # (out, r) @ (r, in) -> (out, in)
        if self.detach_norm:
            lora_w = lora_w.detach()
        V = W + self.scaling * lora_w
        norm = torch.linalg.norm(V, dim=self.norm_dim).to(V.dtype)
        # DoRA §4.3: "treat ||V + ΔV||_c as a constant, detaching it from the gradient graph";
        # it still follows ΔV in the forward pass, it only receives no gradient.
        return norm.detach() if self.detach_norm else norm

    def forward(self, x: Tensor) -> Tensor:
        result = self.base(x)                                 # W x + b on the un-dropped input
        if self.merged:
            return result
        x = x.to(self.lora_A.weight.dtype)
        scale = (self.lora_magnitude_vector / self.weight_norm()).view(1, -1)  # (1, out)
        if self.training and isinstance(self.lora_dropout, nn.Dropout) and self.lora_dropout.p > 0:
            x = self.lora_dropout(x)                          # PEFT: the DoRA term sees dropped x,
            base_out = F.linear(x, self.base.weight.to(x.dtype))  # so W x_drop is recomputed
        else:
            base_out = result if self.base.bias is None else result - self.base.bias
        lora_out = self.lora_B(self.lora_A(x))                # B A x, (..., out)
        # = m/‖V‖_c · (W + sBA) x + b, written as a correction on the base output (PEFT's form)
        return (result + ((scale - 1) * base_out + scale * lora_out * self.scaling)).to(result.dtype)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """W' = m · (W + ΔW) / ‖W + ΔW‖_c computed in fp32, returned in W's dtype (out, in)."""
        W = self.base.weight.float()
        w = dora_weight(W, self.delta_weight().float(), self.lora_magnitude_vector.float(), self.norm_dim)
        return w.to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W ← m · (W + ΔW) / ‖W + ΔW‖_c: one matmul at inference, no extra latency."""
        if self.merged:
            return
        self._check_mergeable()
        W = self.base.weight.float()
        # the norm belongs to the UNmerged weight, so keep it (out,) to undo the merge (as PEFT does)
        self._merge_norm = torch.linalg.norm(W + self.delta_weight().float(), dim=self.norm_dim, keepdim=True)
        self.base.weight.copy_(self.merged_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W ← W' · ‖W + ΔW‖_c / m − ΔW (exact up to the rounding of the weight dtype)."""
        if not self.merged:
            return
        m = self.lora_magnitude_vector.float().view(self._merge_norm.shape)
        W = self.base.weight.float() * self._merge_norm / m - self.delta_weight().float()
        self.base.weight.copy_(W.to(self.base.weight.dtype))
        del self._merge_norm
        self.merged = False


@torch.no_grad()
def copy_from_peft(layer: DoRALinear, peft_layer: nn.Module, adapter: str = "default") -> None:
    """State-dict copy from PEFT's `lora.Linear` with `use_dora=True`: W, b, A, B (via lora) and m."""
    mags = getattr(peft_layer, "lora_magnitude_vector", {})
    if adapter not in mags:
        raise ValueError(f"the PEFT layer has no DoRA magnitude for adapter {adapter!r}: build it with use_dora=True")
    lora.copy_from_peft(layer, peft_layer, adapter)
    m = mags[adapter].weight
    if m.shape != layer.lora_magnitude_vector.shape:
        raise ValueError(f"magnitude shapes differ: PEFT {tuple(m.shape)} vs ours "
                         f"{tuple(layer.lora_magnitude_vector.shape)} (one norm per output row?)")
    layer.lora_magnitude_vector.copy_(m)


class WrongAxisDoRALinear(DoRALinear):
    """DoRA with the norm per INPUT column (dim=0 of (out, in)): WRONG, kept for the lesson.

    Its magnitude has shape (in,), so it rescales input features, not output neurons,
    and the rows of its merged weight no longer have norm m.
    """

    norm_dim = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        delta = self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (out, in)
        W = dora_weight(self.base.weight, delta, self.lora_magnitude_vector, norm_dim=0)
        return F.linear(self.lora_dropout(x), W, self.base.bias)


# ---------------------------------------------------------------- ΔM / ΔD analysis (paper §2.2)

@torch.no_grad()
def effective_weight(module: nn.Module) -> Tensor:
    """The dense weight (out, in) a layer applies, in fp32: nn.Linear, peftlab LoRA/DoRA, PEFT LoRA/DoRA."""
    if isinstance(module, DoRALinear):
        return module.base.weight.float() if module.merged else module.merged_weight().float()
    if isinstance(module, lora.LoRALinear):
        W = module.base.weight.float()
        return W if module.merged else W + module.delta_weight().float()
    if hasattr(module, "get_base_layer") and hasattr(module, "lora_A"):  # a PEFT LoraLayer
        W = module.get_base_layer().weight.float()
        if module.merged or module.disable_adapters:
            return W
        for name in module.active_adapters:
            delta = module.get_delta_weight(name).float()
            if name in module.lora_magnitude_vector:          # DoRA: m · (W+Δ)/‖W+Δ‖_c
                W = dora_weight(W, delta, module.lora_magnitude_vector[name].weight.float())
            else:
                W = W + delta
        return W
    if isinstance(module, nn.Linear):
        return module.weight.float()
    raise ValueError(f"no weight to read from {type(module).__name__}: pass an nn.Linear or a LoRA/DoRA layer")


def delta_m_d(W0: Tensor, Wt: Tensor) -> tuple[float, float]:
    """ΔM, ΔD between a pretrained W0 and a fine-tuned Wt, both (out, in); paper §2.2, Eq. (3)-(4).

    ΔM = mean_n |‖Wt_n‖ − ‖W0_n‖|, ΔD = mean_n (1 − cos(Wt_n, W0_n)), n over output neurons
    (the paper's k columns of its (d, k) W are our rows).
    """
    if W0.shape != Wt.shape or W0.ndim != 2:
        raise ValueError(f"need two weights of the same 2-D shape, got {tuple(W0.shape)} and {tuple(Wt.shape)}")
    W0, Wt = W0.detach().double(), Wt.detach().double()  # ΔD is ~1e-6 after a few steps: fp32 cos is too coarse
    dm = (row_norm(Wt) - row_norm(W0)).abs().mean()
    dd = (1 - F.cosine_similarity(Wt, W0, dim=1)).mean()
    return float(dm), float(dd)


def correlation(x: Iterable[float], y: Iterable[float]) -> float:
    """Pearson correlation of two equally long series (NaN if either is constant)."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"need two series of equal length >= 3, got {x.size} and {y.size}")
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def target_layers(model: nn.Module, target: str = "q_proj") -> dict[int, nn.Module]:
    """{layer index: module} for modules named `...layers.<i>....<target>` (the adapter wrapper, not its base)."""
    found = {}
    for name, module in model.named_modules():
        hit = re.search(r"layers\.(\d+)\.", name)
        if hit and name.split(".")[-1] == target:
            found[int(hit.group(1))] = module
    if not found:
        raise ValueError(f"no module named {target!r} inside a `layers.<i>` block; check the target name")
    return found


class MDRecorder(TrainerCallback):
    """A TrainerCallback recording (step, layer, ΔM, ΔD) for one projection every `every` steps."""

    def __init__(self, model: nn.Module, target: str = "q_proj", every: int = 1):
        if every < 1:
            raise ValueError(f"every={every}: record at least every step (every >= 1)")
        self.target, self.every, self.rows = target, every, []
        self.w0 = {i: effective_weight(m).clone() for i, m in target_layers(model, target).items()}

    def record(self, model: nn.Module, step: int) -> None:
        for i, module in target_layers(model, self.target).items():
            dm, dd = delta_m_d(self.w0[i], effective_weight(module))
            self.rows.append({"step": step, "layer": i, "dM": dm, "dD": dd})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.record(model, state.global_step)
