"""Block-size explorer: pick a layer, a block size and a 4-bit data type; see where the weights
land between the code levels and what the round trip costs.

    ŵ = code[nearest(w / absmax_b)] · absmax_b,   bits/param = 4 + 32 / blocksize   (QLoRA §3)

A large block has one large absmax, so most weights crowd near 0 and the outer levels go unused;
NF4 spends its levels where a normal block puts its weights (Dettmers et al. 2023,
arXiv:2305.14314). `BlockExplorerModel` holds the logic (traitlets only, no widget imports) so
pytest can drive it; `BlockExplorer` is the ipywidgets view. Bad input (block size not a power of
two or out of range, unknown data type or layer, all-zero or NaN weights) shows a message in the
readout, never a traceback. A model already loaded in 4-bit is explored through its dequantized
weights (`rank_explorer.dense_weight`), and the readout says so.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from traitlets import Dict, HasTraits, Int, List, Unicode, observe

from . import nf4, viz
from .rank_explorer import dense_weight, matrix_shape, weight_problem
from .widgets import ModelView, ipw

BINS = 161  # histogram bins over [−1, 1]: the figure carries counts, not every weight


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: weight (out, in)} of every nn.Linear except the output head (no copies)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}


class BlockExplorerModel(HasTraits):
    """The explorer's state and numbers. Set `layer` / `blocksize` / `quant_type`; read `summary`."""

    layers = List(Unicode())        # the selectable weight names
    layer = Unicode()               # the chosen one
    blocksize = Int(64)             # weights per absmax constant
    quant_type = Unicode("nf4")     # one of nf4.QUANT_TYPES
    summary = Dict()                # the numbers shown (empty while the input is invalid)
    message = Unicode("")           # what is wrong with the input, and what to do ("" when fine)

    def __init__(self, weights: Mapping[str, torch.Tensor], layer: str | None = None,
                 blocksize: int = 64, quant_type: str = "nf4"):
        if not weights:
            raise ValueError("weights is empty: pass {name: weight}, e.g. "
                             "block_explorer.linear_weights(model)")
        self._weights = dict(weights)   # as given: a 4-bit weight keeps its quant_state until used
        for k, w in self._weights.items():
            matrix_shape(k, w)              # ValueError naming the key unless a non-empty (out, in)
        self._cache: dict[tuple, dict] = {}
        super().__init__(layers=list(self._weights))
        with self.hold_trait_notifications():
            self.layer = layer if layer is not None else self.layers[0]
            self.blocksize, self.quant_type = blocksize, quant_type
        self._update()

    @observe("layer", "blocksize", "quant_type")
    def _on_change(self, change) -> None:
        with self.hold_trait_notifications():  # observers see summary and message together
            self._update()

    def _update(self) -> None:
        if self.layer not in self._weights:
            self.summary, self.message = {}, (f"unknown layer {self.layer!r}: choose one of "
                                              f"{', '.join(self.layers[:6])}" + (" …" if len(self.layers) > 6 else ""))
            return
        key = (self.layer, self.blocksize, self.quant_type)
        if key not in self._cache:
            try:
                nf4.code_for(self.quant_type)
                w, note = dense_weight(self._weights[self.layer])
                if weight_problem(self.layer, w):          # int8 / NaN / all zeros: say that first
                    raise ValueError(weight_problem(self.layer, w))
                nf4.check_input(w, self.blocksize)
            except ValueError as err:
                self.summary, self.message = {}, str(err)
                return
            self._cache[key] = self._measure(w, *key, note=note)
        self.message, self.summary = "", self._cache[key]

    def _measure(self, w: torch.Tensor, layer: str, blocksize: int, quant_type: str, note: str = "") -> dict:
        w = w.float()
        code = nf4.code_for(quant_type)
        idx, absmax = nf4.quantize_blockwise(w, code, blocksize)
        w_hat = nf4.dequantize_blockwise(idx, absmax, code, blocksize).view(w.shape)
        scaled = w.reshape(-1) / absmax.repeat_interleave(blocksize)[: w.numel()].clamp(min=1e-38)
        counts = torch.histc(scaled, bins=BINS, min=-1, max=1)
        used = torch.bincount(idx.long(), minlength=16).float() / idx.numel()
        entropy = -(used[used > 0] * used[used > 0].log2()).sum().item()  # bits of 4 the codes carry
        stats = nf4.error_stats(w, w_hat)
        return {"layer": layer, "shape": tuple(w.shape), "blocksize": blocksize, "quant_type": quant_type, "note": note,
                "rmse": stats["rmse"], "rel": stats["rel"], "entropy": entropy,
                "bits": 4 + nf4.constant_bits(blocksize), "levels": code.tolist(),
                "counts": counts.tolist(), "inner": (scaled.abs() < 0.25).float().mean().item()}

    def readout(self) -> str:
        """One stable line of text with the numbers (or the message)."""
        if self.message:
            return f"⚠ {self.message}"
        d = self.summary
        return (f"{d['layer']} {d['shape'][0]}×{d['shape'][1]} · {d['quant_type'].upper()}, "
                f"block size {d['blocksize']} → {d['bits']:.3f} bits/param · relative error "
                f"‖W−Ŵ‖/‖W‖ = {d['rel']:.4f} · RMSE {d['rmse']:.2e} · codes carry "
                f"{d['entropy']:.2f} of 4 bits · {100 * d['inner']:.0f}% of weights within ±0.25 absmax"
                + (f" · from {d['note']}" if d["note"] else ""))

    def figure(self):
        """Histogram of w / absmax with the code levels (a go.Figure), or None on invalid input."""
        if self.message:
            return None
        d = self.summary
        step = 2 / BINS
        centers = [-1 + step * (i + 0.5) for i in range(BINS)]
        return viz.levels_histogram(centers, d["counts"], d["levels"],
                                    f"{d['layer']}: {d['quant_type'].upper()}, block {d['blocksize']} "
                                    f"(rel. error {d['rel']:.3f})")


class BlockExplorer(ModelView):
    """Layer dropdown + block-size slider + data-type dropdown → readout + histogram."""

    def __init__(self, model: BlockExplorerModel):
        self.layer = ipw.Dropdown(options=model.layers, description="layer")
        self.size = ipw.SelectionSlider(options=list(nf4.BLOCKSIZES), description="block size",
                                        continuous_update=True)
        self.dtype = ipw.Dropdown(options=list(nf4.QUANT_TYPES), description="data type")
        super().__init__(model, [ipw.HBox([self.layer, self.dtype]), self.size],
                         watch=["summary", "message"], css="peftlab-block-explorer")
        for w, cls in [(self.layer, "layer"), (self.size, "size"), (self.dtype, "dtype"),
                       (self.readout, "readout"), (self.plot, "plot")]:
            w.add_class(f"peftlab-block-{cls}")
        # the model accepts any value and shows a message; controls only ever offer valid ones,
        # so they follow the model only when its value is one they offer
        for ctrl, trait in [(self.layer, "layer"), (self.size, "blocksize"), (self.dtype, "quant_type")]:
            self._follow(ctrl, trait)
            ipw.dlink((ctrl, "value"), (model, trait))

    def _follow(self, ctrl, trait: str) -> None:
        def sync(change=None):
            value = getattr(self.model, trait)
            if value in ctrl.options:
                ctrl.value = value
        sync()
        self.model.observe(sync, names=trait)

    @classmethod
    def from_model(cls, model: nn.Module, layer: str | None = None, blocksize: int = 64,
                   quant_type: str = "nf4") -> "BlockExplorer":
        return cls(BlockExplorerModel(linear_weights(model), layer, blocksize, quant_type))
