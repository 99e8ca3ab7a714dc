"""Rank explorer: pick a weight matrix and a rank r, see what a rank-r approximation keeps.

    error(r) = ‖W − W_r‖_F / ‖W‖_F = sqrt(Σ_{i>r} σ_i²) / ‖W‖_F,   LoRA params = r · (in + out)

(Eckart–Young; LoRA, Hu et al. 2021, arXiv:2106.09685.) `RankExplorerModel` holds the logic
(traitlets only, no widget imports) so pytest can drive it; `RankExplorer` is the ipywidgets
view: a layer dropdown, a rank slider, a readout and the spectrum figure, updating live.
Bad input (unknown layer, r out of range, all-zero or NaN weights) shows a message in the
readout, never a traceback. A 4-bit model's weights (bitsandbytes packs two NF4 codes per
byte, (out·in/2, 1) uint8) are dequantized first, and the readout says so (`dense_weight`).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from traitlets import Dict, HasTraits, Int, List, Unicode, observe

from . import lora, lowrank, viz
from .widgets import ModelView, ipw


def linear_weights(model: nn.Module, include_head: bool = False) -> dict[str, torch.Tensor]:
    """{module name: weight (out, in)} of every nn.Linear in `model` (no copies)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    return {n: m.weight for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n and (include_head or m is not head)}


def dense_weight(w: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(the float (out, in) matrix behind a linear's weight, a note for the readout). A bitsandbytes
    4-bit weight is packed codes + a `quant_state`: dequantize_4bit gives the matrix the model
    computes with (QLoRA, Dettmers et al. 2023, arXiv:2305.14314); other tensors come back as they are."""
    qs = getattr(w, "quant_state", None)
    if qs is None:
        return w.detach(), ""
    import bitsandbytes.functional as bnbf  # only a 4-bit model gets here, so it is installed

    return bnbf.dequantize_4bit(w.data, qs).float(), f"dequantized {str(qs.quant_type).upper()} weights"


def weight_problem(name: str, w: torch.Tensor) -> str:
    """Why the matrix `w` of layer `name` has no meaningful spectrum or quantization ("" if none)."""
    if not w.is_floating_point():
        return (f"layer {name} holds {w.dtype} values, not float weights (an 8-bit or packed format?): "
                "load the model in 16/32-bit or 4-bit NF4 to explore it, or pick another layer")
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        return (f"layer {name} has {bad:,} NaN/inf values of {w.numel():,}: its numbers are undefined; "
                "reload the weights (a diverged run or a broken file?) or pick another layer")
    if not w.abs().max() > 0:
        return (f"layer {name} is all zeros (‖W‖ = 0): there is nothing to approximate or quantize; pick another "
                "layer (a freshly initialized LoRA B is zero by design)")
    return ""


def matrix_shape(name: str, w) -> tuple[int, int]:
    """(out, in) of a weight, packed 4-bit included; ValueError (naming the layer) if it is no matrix."""
    shape = tuple(getattr(getattr(w, "quant_state", None), "shape", None) or getattr(w, "shape", ()))
    if not isinstance(w, torch.Tensor) or len(shape) != 2 or 0 in shape:
        raise ValueError(f"weight {name!r} is not a non-empty 2-D matrix (out, in), got "
                         f"{shape if isinstance(w, torch.Tensor) else type(w).__name__}: pass "
                         "{name: weight (out, in)}, e.g. linear_weights(model)")
    return shape


class RankExplorerModel(HasTraits):
    """The explorer's state and numbers. Set `layer` / `rank`; read `summary` and `message`."""

    layers = List(Unicode())   # the selectable matrix names
    layer = Unicode()          # the chosen one
    rank = Int(8)              # r of the approximation / of a LoRA adapter on this layer
    max_rank = Int(1)          # min(out, in) of the chosen matrix
    summary = Dict()           # the numbers shown (empty while the input is invalid)
    message = Unicode("")      # what is wrong with the input, and what to do ("" when fine)

    def __init__(self, weights: Mapping[str, torch.Tensor], layer: str | None = None, rank: int = 8):
        if not weights:
            raise ValueError("weights is empty: pass {name: weight (out, in)}, e.g. "
                             "rank_explorer.linear_weights(model)")
        self._weights = dict(weights)
        self._shapes = {k: matrix_shape(k, w) for k, w in self._weights.items()}
        self._spectra: dict[str, tuple[torch.Tensor, str]] = {}  # SVD is the slow part: once per layer
        super().__init__(layers=list(self._weights))
        with self.hold_trait_notifications():
            self.layer = layer if layer is not None else self.layers[0]
            self.rank = rank
        self._update()

    def spectrum(self, name: str | None = None) -> torch.Tensor:
        """σ_i of layer `name` (4-bit weights dequantized); ValueError if the weights have none."""
        return self._spectrum(name or self.layer)[0]

    def _spectrum(self, name: str) -> tuple[torch.Tensor, str]:
        if name not in self._spectra:
            w, note = dense_weight(self._weights[name])
            problem = weight_problem(name, w)
            if problem:
                raise ValueError(problem)
            self._spectra[name] = lowrank.spectrum(w), note
        return self._spectra[name]

    @observe("layer", "rank")
    def _on_change(self, change) -> None:
        with self.hold_trait_notifications():  # observers see summary and message together
            self._update()

    def _update(self) -> None:
        if self.layer not in self._weights:
            self.summary, self.message = {}, (
                f"unknown layer {self.layer!r}: choose one of {', '.join(self.layers[:8])}"
                + (" …" if len(self.layers) > 8 else ""))
            return
        out_f, in_f = self._shapes[self.layer]
        self.max_rank = min(out_f, in_f)
        try:
            s, note = self._spectrum(self.layer)    # a broken layer says so whatever r is
            lora.validate_rank(self.rank, in_f, out_f)
        except ValueError as err:
            self.summary, self.message = {}, str(err)
            return
        r = self.rank
        self.message, self.summary = "", {
            "layer": self.layer, "shape": (out_f, in_f), "rank": r, "max_rank": self.max_rank, "note": note,
            "error": lowrank.relative_error(s, r), "energy": lowrank.energy(s, r),
            "lora_params": r * (in_f + out_f), "full_params": in_f * out_f,
        }

    def readout(self) -> str:
        """One stable line of text with the numbers (or the message)."""
        if self.message:
            return f"⚠ {self.message}"
        d = self.summary
        pct = 100 * d["lora_params"] / d["full_params"]
        return (f"{d['layer']} {d['shape'][0]}×{d['shape'][1]} · r = {d['rank']} of {d['max_rank']} · "
                f"relative error ‖W−W_r‖/‖W‖ = {d['error']:.4f} · energy kept = {100 * d['energy']:.1f}% · "
                f"LoRA params r·(in+out) = {d['lora_params']:,} vs full matrix {d['full_params']:,} "
                f"({pct:.2f}%)" + (f" · SVD of {d['note']}" if d["note"] else ""))

    def figure(self):
        """The spectrum with the cut at r (a go.Figure), or None while the input is invalid."""
        if self.message:
            return None
        d = self.summary
        return viz.spectrum_cut(self.spectrum(), d["rank"],
                                f"{d['layer']}: σ_i, cut at r = {d['rank']} (error {d['error']:.3f})")


class RankExplorer(ModelView):
    """Dropdown (layer) + slider (rank) → readout + spectrum figure. `display(view)` to show."""

    def __init__(self, model: RankExplorerModel):
        self.dropdown = ipw.Dropdown(options=model.layers, description="layer")
        self.slider = ipw.IntSlider(min=1, max=model.max_rank, description="rank r", continuous_update=True)
        # slider.max follows the matrix; set before linking the value so it is never clamped
        ipw.dlink((model, "max_rank"), (self.slider, "max"))
        # layer: a plain link would raise on a name the dropdown does not offer; the model
        # accepts any string and shows the message instead
        self.dropdown.value = model.layer if model.layer in model.layers else None
        ipw.dlink((self.dropdown, "value"), (model, "layer"), lambda v: v or "")
        model.observe(self._sync_layer, names="layer")
        ipw.link((model, "rank"), (self.slider, "value"))
        super().__init__(model, [ipw.HBox([self.dropdown, self.slider])], watch=["summary", "message"],
                         css="peftlab-rank-explorer")
        for w, cls in ((self.dropdown, "layer-dropdown"), (self.slider, "rank-slider"),
                       (self.readout, "rank-readout"), (self.plot, "rank-plot")):
            w.add_class(f"peftlab-{cls}")

    def _sync_layer(self, change) -> None:
        if change.new in self.dropdown.options:
            self.dropdown.value = change.new

    @classmethod
    def from_model(cls, model: nn.Module, layer: str | None = None, rank: int = 8) -> "RankExplorer":
        return cls(RankExplorerModel(linear_weights(model), layer=layer, rank=rank))
