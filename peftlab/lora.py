"""LoRA from scratch, in PEFT's layout: a frozen linear layer plus a trainable low-rank update.

    h = W0 x + (alpha / r) · B A x      W0 (out, in) frozen,  A (r, in),  B (out, r),  r ≪ min(in, out)

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
rsLoRA (Kalajdzievski 2023, arXiv:2312.03732) scales by alpha / sqrt(r) instead.

Names and layouts follow PEFT's `tuners/lora/layer.py` (`lora_A`, `lora_B`, `scaling`,
`lora_dropout`, `base`), so an equivalence test against PEFT is a state-dict copy.
Also here: injection by target-module names, merge/unmerge, and parameter counting from a
model config alone (no weights), which is how the "4.2M trainable of 6.7B" line is checked.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

ALL_LINEAR = "all-linear"  # PEFT's shorthand: every nn.Linear except the output head


def validate_rank(r: int, in_features: int, out_features: int) -> None:
    """Raise ValueError unless 1 ≤ r ≤ min(in, out) (a larger r cannot add rank to BA)."""
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}: use r ≥ 1 "
                         "(typical values 4–64)")
    if r > min(in_features, out_features):
        raise ValueError(f"LoRA rank r={r} exceeds min(in, out) = min({in_features}, {out_features}) = "
                         f"{min(in_features, out_features)}: BA cannot have rank above that; "
                         f"pick r ≤ {min(in_features, out_features)}")


class LoRALinear(nn.Module):
    """`base(x) + scaling · lora_B(lora_A(dropout(x)))` around a frozen `nn.Linear`.

    Adapter weights live in fp32 by default, like PEFT's `autocast_adapter_dtype=True`
    (a bf16/fp16 base gets an fp32 adapter); pass `adapter_dtype` to override.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, adapter_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        validate_rank(r, base.in_features, base.out_features)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.base.requires_grad_(False)                  # W0 frozen
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        # alpha/r keeps the update's size stable when r changes (paper §4.1); rsLoRA: alpha/sqrt(r)
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        dev = base.weight.device
        dtype = adapter_dtype or (torch.float64 if base.weight.dtype == torch.float64 else torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev, dtype=dtype)   # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev, dtype=dtype)  # (out, r)
        self.merged = False
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        # A like nn.Linear's default (kaiming-uniform, a=sqrt(5)), B = 0: so BA = 0 and training
        # starts exactly at the pretrained model (paper §4.1; PEFT init_lora_weights=True).
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, shape (out, in), in the adapter dtype."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # (out, r) @ (r, in)

    def _check_mergeable(self) -> None:
        if not self.base.weight.dtype.is_floating_point:
            raise ValueError("cannot merge into a quantized base weight: dequantize the model first "
                             "(or keep the adapter unmerged)")

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + ΔW; the forward is then one matmul (no extra latency)."""
        if self.merged:
            return
        self._check_mergeable()
        self.base.weight.data += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − ΔW (exact up to the rounding of the weight dtype)."""
        if not self.merged:
            return
        self.base.weight.data -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out)
        result = self.base(x)
        if self.merged:
            return result
        xa = self.lora_dropout(x.to(self.lora_A.weight.dtype))
        return (result + self.lora_B(self.lora_A(xa)) * self.scaling).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}, merged={self.merged}"


@torch.no_grad()
def copy_from_peft(layer: LoRALinear, peft_layer: nn.Module, adapter: str = "default") -> None:
    """State-dict copy from PEFT's `lora.Linear` (base weight, bias, A, B) into `layer`."""
    src = peft_layer.get_base_layer()
    if (src.in_features, src.out_features, peft_layer.r[adapter]) != (layer.in_features, layer.out_features, layer.r):
        raise ValueError("shapes differ: build the LoRALinear with the same (in, out, r) as the PEFT layer")
    layer.base.weight.copy_(src.weight)
    if src.bias is not None:
        layer.base.bias.copy_(src.bias)
    layer.lora_A.weight.copy_(peft_layer.lora_A[adapter].weight)
    layer.lora_B.weight.copy_(peft_layer.lora_B[adapter].weight)


def copy_from_peft_model(model: nn.Module, peft_model: nn.Module, adapter: str = "default") -> int:
    """copy_from_peft for every LoRALinear of `model` from the same-named layer of a PeftModel."""
    inner = peft_model.base_model.model
    layers = lora_layers(model)
    for name, layer in layers.items():
        copy_from_peft(layer, inner.get_submodule(name), adapter)
    return len(layers)


# --- targets and injection -----------------------------------------------------------------------

def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # PEFT's rule for a list of names


def linear_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the nn.Linear modules in `model` (e.g. q_proj, …, lm_head)."""
    seen: dict[str, None] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name:
            seen[name.rsplit(".", 1)[-1]] = None
    return list(seen)


def find_targets(model: nn.Module, target_names: Iterable[str] | str) -> list[str]:
    """Full names of the nn.Linear modules whose name is, or ends with, a target name.

    `"all-linear"` selects every nn.Linear except the output head (PEFT's shorthand).
    Raises ValueError listing the linear names that exist when a target matches nothing.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    if isinstance(target_names, str):
        if target_names == ALL_LINEAR:
            out = getattr(model, "get_output_embeddings", lambda: None)()
            return [n for n in linears if model.get_submodule(n) is not out]
        target_names = [target_names]
    target_names = list(target_names)
    if not target_names:
        raise ValueError(f"no target names given: pass e.g. ['q_proj', 'v_proj'] or '{ALL_LINEAR}'; "
                         f"linear modules here: {', '.join(linear_names(model))}")
    missing = [t for t in target_names if not any(_matches(n, t) for n in linears)]
    if missing:
        raise ValueError(f"target name(s) {missing} match no nn.Linear module; the linear module "
                         f"names that exist are: {', '.join(linear_names(model))}")
    return [n for n in linears if any(_matches(n, t) for t in target_names)]


def inject(model: nn.Module, target_names: Iterable[str] | str, r: int, alpha: float,
           dropout: float = 0.0, use_rslora: bool = False, layer_cls: type = LoRALinear,
           **layer_kwargs) -> list[str]:
    """Freeze `model`, replace each targeted nn.Linear by `layer_cls(base, r, alpha, ...)`.

    Returns the replaced module names. Validates every rank before changing anything.
    """
    names = find_targets(model, target_names)
    for n in names:
        lin = model.get_submodule(n)
        validate_rank(r, lin.in_features, lin.out_features)
    model.requires_grad_(False)
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer_cls(getattr(parent, child), r, alpha, dropout=dropout,
                                         use_rslora=use_rslora, **layer_kwargs))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_all(model: nn.Module) -> int:
    layers = lora_layers(model)
    for m in layers.values():
        m.merge()
    return len(layers)


def unmerge_all(model: nn.Module) -> int:
    layers = lora_layers(model)
    for m in layers.values():
        m.unmerge()
    return len(layers)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`...lora_A.weight`, `...lora_B.weight`): what an adapter file holds."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapter(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Swap an adapter in: copy `state` into the LoRA tensors (unmerged layers only)."""
    if any(m.merged for m in lora_layers(model).values()):
        raise ValueError("unmerge the adapter before swapping in another one (lora.unmerge_all(model))")
    own = {k for k in model.state_dict() if ".lora_" in k}
    if set(state) != own:
        raise ValueError(f"adapter keys do not match this model: {len(set(state) - own)} unexpected, "
                         f"{len(own - set(state))} missing; was it saved from the same targets and r?")
    model.load_state_dict(dict(state), strict=False)


# --- counting from a config alone ----------------------------------------------------------------

def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)


def linear_dims(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection in one decoder block of a LLaMA-style config (dict or config)."""
    h, inter = _get(config, "hidden_size"), _get(config, "intermediate_size")
    heads = _get(config, "num_attention_heads")
    if not all(isinstance(v, int) and v > 0 for v in (h, inter, heads)):
        raise ValueError("config needs positive hidden_size, intermediate_size and "
                         "num_attention_heads (a LLaMA-style config), or pass dims yourself")
    kv = _get(config, "num_key_value_heads") or heads
    hd = _get(config, "head_dim") or h // heads
    return {"q_proj": (h, heads * hd), "k_proj": (h, kv * hd), "v_proj": (h, kv * hd),
            "o_proj": (heads * hd, h), "gate_proj": (h, inter), "up_proj": (h, inter),
            "down_proj": (inter, h)}


def count_lora_params(config_or_dims, r: int, target_names: Iterable[str] | str) -> int:
    """Trainable LoRA parameters, r·(in + out) per targeted layer, from a config alone.

    `config_or_dims`: a LLaMA-style config (transformers config or dict with num_hidden_layers),
    or a mapping {name: (in, out)} covering every targeted layer once (then no layer count).
    """
    if isinstance(config_or_dims, Mapping) and config_or_dims and all(
            isinstance(v, tuple) for v in config_or_dims.values()):
        dims, layers = dict(config_or_dims), 1
    else:
        dims, layers = linear_dims(config_or_dims), _get(config_or_dims, "num_hidden_layers")
    targets = list(dims) if target_names == ALL_LINEAR else (
        [target_names] if isinstance(target_names, str) else list(target_names))
    unknown = [t for t in targets if t not in dims]
    if unknown or not targets:
        raise ValueError(f"unknown target name(s) {unknown or targets}: choose from {', '.join(dims)}")
    total = 0
    for t in targets:
        d_in, d_out = dims[t]
        validate_rank(r, d_in, d_out)
        total += r * (d_in + d_out)  # A (r, in) + B (out, r)
    return layers * total


def count_base_params(config) -> int:
    """All parameters of a LLaMA-style causal LM from its config (embeddings, blocks, norms, head)."""
    h, vocab, layers = (_get(config, k) for k in ("hidden_size", "vocab_size", "num_hidden_layers"))
    block = sum(i * o for i, o in linear_dims(config).values()) + 2 * h  # 7 projections + 2 RMSNorms
    head = 0 if _get(config, "tie_word_embeddings", False) else vocab * h
    return vocab * h + layers * block + h + head


def trainable_line(trainable: int, total: int) -> str:
    """PEFT's `print_trainable_parameters` line, character for character."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def human(n: float) -> str:
    """4194304 -> '4.2M', 6742609920 -> '6.7B' (the seed's rounding)."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


# LLaMA-2 shapes (Touvron et al. 2023, Table/config.json of meta-llama/Llama-2-*-hf), written in code
# so the counts need no download. Pass one to transformers.LlamaConfig(**cfg) to build a model.
LLAMA2_CONFIGS: dict[str, dict] = {
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
}

