"""The VRAM estimator: the peak memory of one fine-tuning step, term by term, from the architecture.

    peak = weights (+ NF4 constants) + adapters + grads + optimizer states
           + activations saved for backward + temporaries  (+ CUDA context, stated apart)

    checks    input checks (config.json, sizes, settings): one-line errors that name the field
    spec      architectures and presets, code paths (`Stack`), `Settings`, the `Estimate`, `GPUS`, `report`
    terms     the counting: `estimate`, `normalize_targets`
    measure   the same breakdown measured on a real transformers + PEFT step; the Lit-GPT calibration
    cli       `peftlab estimate` (apps layer: `from peftlab.vram import cli`)
    planner   the widget (imports ipywidgets: `from peftlab.vram import planner`)

`from peftlab import vram; vram.estimate("llama-2-7b", method="qlora")` needs neither
ipywidgets nor a model: `measure` and `planner` load only when imported by name.
"""
from .spec import (ALIASES, CUDA_CONTEXT, DTYPES, GB, GPUS, METHODS, OPTIMIZERS, PRESETS, RESERVED_OVERHEAD,
                   STACKS, Arch, Estimate, GiB, Settings, Stack, from_config, report, resolve)
from .terms import estimate, normalize_targets

__all__ = ["Arch", "Settings", "Stack", "Estimate", "PRESETS", "ALIASES", "STACKS", "GPUS", "METHODS",
           "OPTIMIZERS", "DTYPES", "CUDA_CONTEXT", "RESERVED_OVERHEAD", "GB", "GiB", "resolve",
           "from_config", "estimate", "normalize_targets", "report"]
