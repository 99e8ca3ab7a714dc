"""VRAM estimator: the peak memory of one fine-tuning step, term by term, from the architecture.

    peak = weights (+ NF4 constants) + adapters + grads + optimizer states
           + activations saved for backward + temporaries            (≈ torch.cuda.max_memory_allocated)
    + CUDA context                                                   (outside the allocator, stated apart)

Activations are counted per block from what autograd really keeps (Korthikanti et
al. 2022, arXiv:2205.05198, count the same way for full training): a frozen linear
keeps nothing of its input (its input-gradient needs only W); LoRA's A keeps its input
(PEFT casts it to the fp32 adapter dtype: one copy per module), dropout keeps its
mask; SDPA keeps q, k, v, out and a log-sum-exp, eager attention the T×T softmax;
gated MLPs keep 3 (T, i) tensors; logits are kept in fp32 by the loss. QLoRA (Dettmers
et al. 2023, arXiv:2305.14314): NF4 = 4 bit + one fp32 absmax per 64 weights, double
quantization = 8-bit absmax + fp32 per 256 blocks. Which code runs decides the bytes, so
the code path is named: `Stack` ("hf": transformers + PEFT as used in this kit,
"litgpt": Lit-GPT 2023, whose published peaks calibrate the model). Measured against
the embedded model in `vram_measure`; the terms are explained in notebook 05.
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import settings as _settings

GB, GiB = 1e9, 2**30
METHODS = _settings.METHODS
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
DTYPES = _settings.DTYPE_BYTES  # name -> bytes per element
CUDA_CONTEXT = 500 * 2**20  # CUDA context + kernels, per process, never in max_memory_allocated
RESERVED_OVERHEAD = 0.15    # the caching allocator reserves ~10-25% above allocated (FINDINGS.md)


@dataclass(frozen=True)
class Arch:
    name: str
    hidden: int              # d_model
    intermediate: int        # MLP width i
    layers: int              # decoder blocks L
    heads: int               # query heads
    kv_heads: int            # key/value heads (GQA when < heads)
    vocab: int               # rows of the embedding / lm_head
    head_dim: int = 0        # 0 -> hidden // heads
    gated: bool = True       # SwiGLU (gate, up, down) vs plain GELU MLP (fc, proj)
    rmsnorm: bool = True     # RMSNorm (LLaMA) vs LayerNorm (GPT-NeoX, phi)
    bias: bool = False       # biases on attention and MLP linears
    qkv_bias: bool = False   # biases on q, k, v only (Qwen2)
    tied: bool = False       # lm_head shares the embedding matrix
    parallel: bool = False   # parallel residual: attention and MLP read the same block input
    shared_norm: bool = False  # one norm feeds both branches (phi)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear in one block, HF names."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.hd, self.kv_heads * self.hd
        d = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
             "up_proj": (h, i), "down_proj": (i, h)}
        if self.gated:
            d["gate_proj"] = (h, i)
        return d

    def n_params(self) -> int:
        lin = sum(a * b for a, b in self.linears().values())
        biases = sum(o for n, (_, o) in self.linears().items()
                     if self.bias or (self.qkv_bias and n in ("q_proj", "k_proj", "v_proj")))
        norm = self.hidden * (1 if self.rmsnorm else 2)
        per_block = lin + biases + norm * (1 if self.shared_norm else 2)
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_block + emb + norm


def _p(name, h, i, L, nh, kv, V, **kw):
    return name, Arch(name, h, i, L, nh, kv, V, **kw)


PRESETS: dict[str, Arch] = dict([
    _p("llama-2-7b", 4096, 11008, 32, 32, 32, 32000),
    _p("llama-2-13b", 5120, 13824, 40, 40, 40, 32000),
    _p("llama-2-70b", 8192, 28672, 80, 64, 8, 32000),
    _p("llama-65b", 8192, 22016, 80, 64, 64, 32000),
    _p("mistral-7b", 4096, 14336, 32, 32, 8, 32000),
    _p("llama-3-8b", 4096, 14336, 32, 32, 8, 128256),
    _p("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, qkv_bias=True, tied=True),
    _p("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 151936, qkv_bias=True, tied=True),
    _p("qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, qkv_bias=True),
    _p("smollm2-135m", 576, 1536, 30, 9, 3, 49152, tied=True),
    _p("smollm2-360m", 960, 2560, 32, 15, 5, 49152, tied=True),
    _p("smollm2-1.7b", 2048, 8192, 24, 32, 32, 49152, tied=True),
    _p("phi-1.5", 2048, 8192, 24, 32, 32, 51200, gated=False, rmsnorm=False, bias=True,
       parallel=True, shared_norm=True),
    _p("stablelm-alpha-3b", 4096, 16384, 16, 32, 32, 50688, gated=False, rmsnorm=False,
       bias=True, parallel=True),
])
ALIASES = {"llama-1-65b": "llama-65b", "llama-3.1-8b": "llama-3-8b", "phi-1_5": "phi-1.5",
           "stablelm-base-alpha-3b": "stablelm-alpha-3b", "embedded": "smollm2-135m"}


def from_config(path: str | Path) -> Arch:
    """An `Arch` from a Hugging Face config.json (LLaMA/Mistral/Qwen/phi/GPT-NeoX keys)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        c = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read config {path}: {err.__class__.__name__}: give a readable "
                         "HF config.json or a preset name") from None
    c = {**c, **c.get("text_config", {})}
    try:
        h = int(c.get("hidden_size") or c["n_embd"])
        nh = int(c.get("num_attention_heads") or c["n_head"])
        mt = c.get("model_type", "")
        arch = Arch(
            name=c.get("_name_or_path") or path.parent.name or "custom", hidden=h,
            intermediate=int(c.get("intermediate_size") or c.get("n_inner") or 4 * h),
            layers=int(c.get("num_hidden_layers") or c["n_layer"]), heads=nh,
            kv_heads=int(c.get("num_key_value_heads") or nh), vocab=int(c["vocab_size"]),
            head_dim=int(c.get("head_dim") or 0),
            gated=c.get("hidden_act", "silu") in ("silu", "swiglu") and mt not in ("phi", "gpt_neox"),
            rmsnorm="rms_norm_eps" in c and mt not in ("phi", "gpt_neox"),
            bias=bool(c.get("mlp_bias") or mt in ("phi", "gpt_neox")),
            qkv_bias=bool(c.get("attention_bias") or mt.startswith("qwen2")),
            tied=bool(c.get("tie_word_embeddings", mt not in ("phi", "gpt_neox"))),
            parallel=bool(c.get("use_parallel_residual") or mt == "phi"),
            shared_norm=mt == "phi")
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"config {path} lacks a field the estimator needs ({err}): it must give "
                         "hidden_size, num_attention_heads, num_hidden_layers, vocab_size") from None
    _check_arch(arch)
    return arch


def _check_arch(a: Arch) -> None:
    for f in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab"):
        if getattr(a, f) <= 0:
            raise ValueError(f"architecture field {f} must be > 0, got {getattr(a, f)}")
    if a.heads % a.kv_heads:
        raise ValueError(f"heads ({a.heads}) must be a multiple of kv_heads ({a.kv_heads})")


def resolve(model: str | Arch) -> Arch:
    """A preset name, a path to a config.json (or its folder), or an `Arch`."""
    if isinstance(model, Arch):
        _check_arch(model)
        return model
    key = str(model).strip()
    low = ALIASES.get(key.lower(), key.lower())
    if low in PRESETS:
        return PRESETS[low]
    if key.endswith(".json") or Path(key).expanduser().exists() or "/" in key:
        return from_config(key)
    close = difflib.get_close_matches(low, list(PRESETS) + list(ALIASES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"unknown model {key!r}: {hint}presets are {', '.join(PRESETS)}; "
                     "or give a path to a config.json")


@dataclass(frozen=True)
class Stack:
    """Facts about the code that runs; each changes which bytes autograd keeps."""
    name: str
    adapter_fp32: bool       # PEFT autocast_adapter_dtype: adapters fp32, inputs cast per module
    rms_fp32_copy: bool      # RMSNorm upcasts its input to fp32 and autograd keeps that copy
    kbit_fp32_stream: bool   # prepare_model_for_kbit_training upcasts embeddings/norms: fp32 stream
    quantize_lm_head: bool   # 4-bit also replaces lm_head (Lit-GPT/Fabric) or keeps it 16-bit (HF)
    bnb_keeps_input: bool    # bitsandbytes MatMul4Bit saves its input A (≤0.4x) or not (0.50 here)
    fused_qkv: bool          # one qkv linear; v stays a view of it; LoRA zero-pad keeps a copy
    fp32_loss: bool          # loss upcasts logits to fp32 (HF) or runs chunked in 16-bit (Lit-GPT)


STACKS = {
    "hf": Stack("hf", True, True, True, False, False, False, True),
    "litgpt": Stack("litgpt", False, True, False, True, True, True, False),  # litgpt RMSNorm: x.float()
}


@dataclass(frozen=True)
class Settings:
    method: str = "lora"                      # full | lora | qlora | dora | qdora
    rank: int = 8                             # LoRA rank r (ignored for full)
    targets: tuple = ("q_proj", "v_proj")     # linear names that get adapters (ignored for full)
    seq_len: int = 512                        # tokens per sequence (pad to the longest)
    batch: int = 1                            # sequences per micro-batch
    grad_ckpt: bool = False                   # gradient checkpointing (keep block inputs, recompute)
    optimizer: str = "adamw"                  # one of OPTIMIZERS
    dtype: str = "bf16"                       # dense weights / compute: bf16 | fp16 | fp32
    double_quant: bool = True                 # NF4 double quantization of the absmax constants
    attn: str = "sdpa"                        # sdpa (flash / mem-efficient) | eager (keeps T×T)
    lora_dropout: float = 0.0                 # dropout on the adapter input (keeps a mask)
    device: str = "cuda"                      # cuda (bool dropout mask, context) | cpu
    stack: str = "hf"                         # hf | litgpt (see Stack)


@dataclass
class Estimate:
    arch: Arch
    settings: Settings
    breakdown: dict = field(default_factory=dict)   # name -> bytes; sums to total
    detail: dict = field(default_factory=dict)      # activation parts -> bytes

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def peak_allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() would report (no CUDA context)."""
        return self.total - self.breakdown.get("cuda_context", 0)

    def fits(self, capacity_gb: float) -> bool:
        need = self.peak_allocated * (1 + RESERVED_OVERHEAD) + self.breakdown.get("cuda_context", 0)
        return need <= capacity_gb * GB

    def to_json(self) -> dict:
        s = asdict(self.settings)
        s["targets"] = list(s["targets"])
        return {"total_bytes": int(self.total), "peak_allocated_bytes": int(self.peak_allocated),
                "breakdown": {k: int(v) for k, v in self.breakdown.items()},
                "settings": {"model": self.arch.name, **s}}


from .vram_terms import estimate, normalize_targets  # noqa: E402  (the counting, one screen each)
from .vram_cli import add_estimate_parser  # noqa: E402,F401  (peftlab estimate)

__all__ = ["Arch", "Settings", "Stack", "Estimate", "PRESETS", "STACKS", "resolve", "from_config",
           "estimate", "normalize_targets", "add_estimate_parser", "GB", "GiB"]
