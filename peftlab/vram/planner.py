"""VRAM planner widget: settings in, predicted peak memory out (total, breakdown, which GPUs fit).

    PlannerModel (traitlets, no widget imports) --estimate--> readout / fits / figure
    VRAMPlanner (widgets.ModelView) links its controls to the model's traits

The numbers come from `vram.estimate` (see `vram.terms` for the terms and papers), the GPU list
and the fit rule from `vram.spec` (`GPUS`, `Estimate.gpu_fits`). Bad input (a rank above a
layer's width, an unknown target, an unreadable config) shows a message inside the widget,
never a traceback; the total reads "—", the GPU list empties and the last figure is greyed and
titled as not current (`widgets.ModelView`). `display(VRAMPlanner())` in a notebook.
"""
from __future__ import annotations

import html

from traitlets import Any, Bool, Enum, HasTraits, Int, Unicode, observe

from .. import viz
from ..widgets import BOLD, ModelView, ipw
from .sharding import STRATEGIES, shard
from .spec import DTYPES, GB, METHODS, OPTIMIZERS, PRESETS, GiB
from .terms import estimate


class PlannerModel(HasTraits):
    model = Unicode("llama-2-7b")           # preset name or path to a config.json
    method = Enum(METHODS, default_value="qlora")
    rank = Int(8)
    targets = Unicode("q_proj,v_proj")      # comma-separated linear names, lm_head, all-linear
    seq_len = Int(512)
    batch = Int(1)
    grad_ckpt = Bool(False)
    optimizer = Enum(OPTIMIZERS, default_value="paged_adamw_8bit")
    dtype = Enum(tuple(DTYPES), default_value="bf16")
    gpus = Int(1)                           # data-parallel GPUs; the figures are per GPU
    strategy = Enum(STRATEGIES, default_value="ddp")  # ddp replicates, fsdp shards (vram.sharding)
    cpu_offload = Bool(False)               # fsdp: sharded states in CPU RAM
    estimate = Any(None, allow_none=True)   # the last valid vram.Estimate
    message = Unicode("")                   # why the current settings cannot be estimated ("" = ok)

    _inputs = ["model", "method", "rank", "targets", "seq_len", "batch", "grad_ckpt", "optimizer", "dtype",
               "gpus", "strategy", "cpu_offload"]

    def __init__(self, **kw):
        super().__init__(**kw)
        self._update()

    @observe(*_inputs)
    def _on_change(self, change) -> None:
        self._update()

    def _update(self) -> None:
        try:
            est = estimate(self.model, method=self.method, rank=self.rank, targets=self.targets,
                           seq_len=self.seq_len, batch=self.batch, grad_ckpt=self.grad_ckpt,
                           optimizer=self.optimizer, dtype=self.dtype)
            est = shard(est, self.gpus, self.strategy, self.cpu_offload)
        except ValueError as err:
            self.estimate, self.message = None, str(err)
            return
        except Exception as err:  # noqa: BLE001 - a widget shows, never raises; the old total goes too
            self.estimate, self.message = None, (f"could not estimate these settings ({type(err).__name__}: "
                                                 f"{err}); please report it as a peftlab bug with the settings")
            return
        self.message = ""
        self.estimate = est

    def readout(self) -> str:
        """Stable text for the total: 'Total: 14.25 GB (13.27 GiB)'."""
        if self.estimate is None:
            return "Total: —"
        t = self.estimate.total
        per = f" per GPU ({self.gpus} × {self.strategy.upper()})" if self.gpus > 1 or self.strategy != "ddp" else ""
        return f"Total: {t / GB:.2f} GB ({t / GiB:.2f} GiB){per}"

    def fits(self) -> list[tuple[str, bool, float]]:
        """(gpu, fits, free GB after the peak, the allocator headroom and the CUDA context)."""
        return [] if self.estimate is None else self.estimate.gpu_fits()

    def figure(self):
        if self.estimate is None:
            return None
        e = self.estimate
        return viz.vram_stacked({f"{e.arch.name} {e.settings.method}": e.breakdown},
                                title=f"{e.arch.name}: {self.readout()}")


class VRAMPlanner(ModelView):
    """Controls → total (HTML), GPU fit list, stacked-bar breakdown. `display(VRAMPlanner())`."""

    READOUT = BOLD

    def __init__(self, model: PlannerModel | None = None):
        model = model or PlannerModel()
        presets = list(PRESETS)
        self.preset = ipw.Dropdown(options=presets, value=model.model if model.model in presets
                                   else presets[0], description="model")
        self.config_path = ipw.Text(placeholder="or a path to config.json", description="config")
        self.method = ipw.Dropdown(options=METHODS, description="method")
        self.rank = ipw.IntSlider(min=1, max=256, description="rank r")
        self.targets = ipw.Text(description="targets")
        self.seq_len = ipw.IntSlider(min=64, max=16384, step=64, description="seq len")
        self.batch = ipw.IntSlider(min=1, max=64, description="batch")
        self.grad_ckpt = ipw.Checkbox(description="gradient checkpointing")
        self.optimizer = ipw.Dropdown(options=OPTIMIZERS, description="optimizer")
        self.dtype = ipw.Dropdown(options=tuple(DTYPES), description="dtype")
        self.n_gpus = ipw.BoundedIntText(min=1, max=1024, description="GPUs")
        self.strategy = ipw.Dropdown(options=STRATEGIES, description="strategy")
        self.cpu_offload = ipw.Checkbox(description="CPU offload (fsdp)")
        self.gpus = ipw.HTML()
        ipw.link((model, "gpus"), (self.n_gpus, "value"))
        for name in ("method", "rank", "targets", "seq_len", "batch", "grad_ckpt", "optimizer", "dtype",
                     "strategy", "cpu_offload"):
            ipw.link((model, name), (getattr(self, name), "value"))
        self.preset.observe(self._model_choice, names="value")
        self.config_path.observe(self._model_choice, names="value")
        controls = ipw.VBox([ipw.HBox([self.preset, self.config_path]),
                             ipw.HBox([self.method, self.dtype, self.optimizer]),
                             ipw.HBox([self.rank, self.targets]),
                             ipw.HBox([self.seq_len, self.batch, self.grad_ckpt]),
                             ipw.HBox([self.n_gpus, self.strategy, self.cpu_offload])])
        super().__init__(model, [controls], watch=["estimate", "message"], css="peftlab-vram-planner",
                         extra=[self.gpus], message_in_readout=False)
        self.total = self.readout                    # the planner's readout is the total
        for w, cls in ((self.method, "method"), (self.seq_len, "seq-len"), (self.batch, "batch"),
                       (self.rank, "rank"), (self.total, "total"), (self.preset, "model"),
                       (self.gpus, "gpus"), (self.message, "message"), (self.plot, "plot")):
            w.add_class(f"peftlab-vram-{cls}")

    def _model_choice(self, change=None) -> None:
        self.model.model = self.config_path.value.strip() or self.preset.value

    def render(self, change=None) -> None:
        super().render(change)
        self.gpus.value = "<br>".join(f"{'✅' if ok else '❌'} {html.escape(g, quote=False)}: {free:+.1f} GB left"
                                      for g, ok, free in self.model.fits())
