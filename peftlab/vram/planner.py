"""VRAM planner widget: settings in, predicted peak memory out (total, breakdown, which GPUs fit).

    PlannerModel (traitlets, no widget imports) --estimate--> readout / fits / figure
    VRAMPlanner (ipywidgets.VBox) links its controls to the model's traits

The numbers come from `vram.estimate` (see there for the terms and papers). Bad input
(a rank above a layer's width, an unknown target, an unreadable config) shows a message
inside the widget, never a traceback. `display(VRAMPlanner())` in a notebook.
"""
from __future__ import annotations

import html
import json

from traitlets import Any, Bool, Enum, HasTraits, Int, Unicode, observe

from . import viz, vram
from .vram_cli import GPUS


class PlannerModel(HasTraits):
    model = Unicode("llama-2-7b")           # preset name or path to a config.json
    method = Enum(vram.METHODS, default_value="qlora")
    rank = Int(8)
    targets = Unicode("q_proj,v_proj")      # comma-separated linear names, lm_head, all-linear
    seq_len = Int(512)
    batch = Int(1)
    grad_ckpt = Bool(False)
    optimizer = Enum(vram.OPTIMIZERS, default_value="paged_adamw_8bit")
    dtype = Enum(tuple(vram.DTYPES), default_value="bf16")
    estimate = Any(None, allow_none=True)   # the last valid vram.Estimate
    message = Unicode("")                   # why the current settings cannot be estimated ("" = ok)

    _inputs = ["model", "method", "rank", "targets", "seq_len", "batch", "grad_ckpt", "optimizer", "dtype"]

    def __init__(self, **kw):
        super().__init__(**kw)
        self._update()

    @observe(*_inputs)
    def _on_change(self, change) -> None:
        self._update()

    def _update(self) -> None:
        try:
            est = vram.estimate(self.model, method=self.method, rank=self.rank, targets=self.targets,
                                seq_len=self.seq_len, batch=self.batch, grad_ckpt=self.grad_ckpt,
                                optimizer=self.optimizer, dtype=self.dtype)
        except ValueError as err:
            self.message = str(err)
            self.estimate = None
            return
        self.message = ""
        self.estimate = est

    def readout(self) -> str:
        """Stable text for the total: 'Total: 14.25 GB (13.27 GiB)'."""
        if self.estimate is None:
            return "Total: —"
        t = self.estimate.total
        return f"Total: {t / vram.GB:.2f} GB ({t / vram.GiB:.2f} GiB)"

    def fits(self) -> list[tuple[str, bool, float]]:
        """(gpu, fits, free GB after the peak, the allocator headroom and the CUDA context)."""
        if self.estimate is None:
            return []
        e = self.estimate
        need = e.peak_allocated * (1 + vram.RESERVED_OVERHEAD) + e.breakdown.get("cuda_context", 0)
        return [(g, e.fits(cap), cap - need / vram.GB) for g, cap in GPUS]

    def figure(self):
        if self.estimate is None:
            return None
        e = self.estimate
        return viz.vram_stacked({f"{e.arch.name} {e.settings.method}": e.breakdown},
                                title=f"{e.arch.name}: {self.readout()}")


def _plotly_output(fig) -> dict:
    """A display_data output for an ipywidgets Output: plotly's mime bundle, no kernel needed."""
    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False))
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": spec, "text/plain": f"<Figure: {fig.layout.title.text}>"}}


import ipywidgets as widgets  # noqa: E402  (the view only; the model above has no widget imports)


class VRAMPlanner(widgets.VBox):
    """Controls → total (HTML), GPU fit list, stacked-bar breakdown. `display(VRAMPlanner())`."""

    def __init__(self, model: PlannerModel | None = None):
        self.model = model = model or PlannerModel()
        presets = list(vram.PRESETS)
        self.preset = widgets.Dropdown(options=presets, value=model.model if model.model in presets
                                       else presets[0], description="model")
        self.config_path = widgets.Text(placeholder="or a path to config.json", description="config")
        self.method = widgets.Dropdown(options=vram.METHODS, description="method")
        self.rank = widgets.IntSlider(min=1, max=256, description="rank r")
        self.targets = widgets.Text(description="targets")
        self.seq_len = widgets.IntSlider(min=64, max=16384, step=64, description="seq len")
        self.batch = widgets.IntSlider(min=1, max=64, description="batch")
        self.grad_ckpt = widgets.Checkbox(description="gradient checkpointing")
        self.optimizer = widgets.Dropdown(options=vram.OPTIMIZERS, description="optimizer")
        self.dtype = widgets.Dropdown(options=tuple(vram.DTYPES), description="dtype")
        self.total = widgets.HTML()
        self.gpus = widgets.HTML()
        self.message = widgets.HTML()
        self.plot = widgets.Output()
        for w, cls in ((self.method, "method"), (self.seq_len, "seq-len"), (self.batch, "batch"),
                       (self.rank, "rank"), (self.total, "total"), (self.preset, "model"),
                       (self.gpus, "gpus"), (self.message, "message"), (self.plot, "plot")):
            w.add_class(f"peftlab-vram-{cls}")
        for name in ("method", "rank", "targets", "seq_len", "batch", "grad_ckpt", "optimizer", "dtype"):
            widgets.link((model, name), (getattr(self, name), "value"))
        self.preset.observe(self._model_choice, names="value")
        self.config_path.observe(self._model_choice, names="value")
        controls = widgets.VBox([widgets.HBox([self.preset, self.config_path]),
                                 widgets.HBox([self.method, self.dtype, self.optimizer]),
                                 widgets.HBox([self.rank, self.targets]),
                                 widgets.HBox([self.seq_len, self.batch, self.grad_ckpt])])
        super().__init__([controls, self.total, self.message, self.gpus, self.plot])
        self.add_class("peftlab-vram-planner")
        self.figure = None
        model.observe(self._render, names=["estimate", "message"])
        self._render()

    def _model_choice(self, change=None) -> None:
        self.model.model = self.config_path.value.strip() or self.preset.value

    def _render(self, change=None) -> None:
        m = self.model
        self.total.value = f"<b>{html.escape(m.readout())}</b>"
        self.message.value = (f"<span style='color:#b00'>{html.escape(m.message)}</span>"
                              if m.message else "")
        rows = [f"{'✅' if ok else '❌'} {html.escape(g)}: {free:+.1f} GB left" for g, ok, free in m.fits()]
        self.gpus.value = "<br>".join(rows)
        fig = m.figure()
        if fig is not None:  # keep the last good figure while the input is invalid
            self.figure = fig
            self.plot.outputs = (_plotly_output(fig),)
