"""What the VRAM estimator talks about: architectures, code paths, settings, the result, GPUs.

    peak = weights (+ NF4 constants) + adapters + grads + optimizer states
           + activations saved for backward + temporaries            (≈ torch.cuda.max_memory_allocated)
    + CUDA context                                                   (outside the allocator, stated apart)

`Arch` is the shape of a decoder-only model (a preset or any Hugging Face config.json),
`Stack` the facts about the code that runs (which bytes autograd keeps depends on it: "hf" =
transformers + PEFT as used in this kit, "litgpt" = Lit-GPT 2023, whose published peaks
calibrate the model), `Settings` one fine-tuning step, `Estimate` the result and `GPUS` the
cards it is checked against. The counting lives in `vram.terms`; QLoRA's NF4 and double
quantization are Dettmers et al. 2023, arXiv:2305.14314; the activation accounting follows
Korthikanti et al. 2022, arXiv:2205.05198.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import settings as _settings
from . import checks

GB, GiB = 1e9, 2**30
METHODS = _settings.METHODS
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
DTYPES = _settings.DTYPE_BYTES  # name -> bytes per element
CUDA_CONTEXT = 500 * 2**20  # CUDA context + kernels, per process, never in max_memory_allocated
RESERVED_OVERHEAD = 0.15    # the caching allocator reserves ~10-25% above allocated (docs/findings.md)

# The one GPU list (CLI report, planner widget, notebook 05): name -> memory in GB (1e9 bytes).
GPUS: dict[str, float] = {"T4 16GB": 16, "RTX 3090/4090 24GB": 24, "A100 40GB": 40, "A100 80GB": 80,
                          "H100 80GB": 80}


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

    def has_bias(self, linear: str) -> bool:
        """Whether the block's linear `linear` (an HF name) carries a bias vector."""
        return self.bias or (self.qkv_bias and linear in ("q_proj", "k_proj", "v_proj"))

    def n_params(self) -> int:
        lin = sum(a * b for a, b in self.linears().values())
        biases = sum(o for n, (_, o) in self.linears().items() if self.has_bias(n))
        norm = self.hidden * (1 if self.rmsnorm else 2)
        per_block = lin + biases + norm * (1 if self.shared_norm else 2)
        emb = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_block + emb + norm


def _presets(*archs: Arch) -> dict[str, Arch]:
    return {a.name: a for a in archs}


_PHI_LIKE = dict(gated=False, rmsnorm=False, bias=True, parallel=True)  # GELU MLP, LayerNorm, biases
PRESETS: dict[str, Arch] = _presets(
    Arch("llama-2-7b", hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000),
    Arch("llama-2-13b", hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, vocab=32000),
    Arch("llama-2-70b", hidden=8192, intermediate=28672, layers=80, heads=64, kv_heads=8, vocab=32000),
    Arch("llama-65b", hidden=8192, intermediate=22016, layers=80, heads=64, kv_heads=64, vocab=32000),
    Arch("mistral-7b", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32000),
    Arch("llama-3-8b", hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256),
    Arch("qwen2.5-0.5b", hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936,
         qkv_bias=True, tied=True),
    Arch("qwen2.5-1.5b", hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936,
         qkv_bias=True, tied=True),
    Arch("qwen2.5-7b", hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064,
         qkv_bias=True),
    Arch("smollm2-135m", hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152,
         tied=True),
    Arch("smollm2-360m", hidden=960, intermediate=2560, layers=32, heads=15, kv_heads=5, vocab=49152,
         tied=True),
    Arch("smollm2-1.7b", hidden=2048, intermediate=8192, layers=24, heads=32, kv_heads=32, vocab=49152,
         tied=True),
    Arch("phi-1.5", hidden=2048, intermediate=8192, layers=24, heads=32, kv_heads=32, vocab=51200,
         shared_norm=True, **_PHI_LIKE),
    Arch("stablelm-alpha-3b", hidden=4096, intermediate=16384, layers=16, heads=32, kv_heads=32,
         vocab=50688, **_PHI_LIKE),
)
ALIASES = {"llama-1-65b": "llama-65b", "llama-3.1-8b": "llama-3-8b", "phi-1_5": "phi-1.5",
           "stablelm-base-alpha-3b": "stablelm-alpha-3b", "embedded": "smollm2-135m"}


def from_config(path: str | Path) -> Arch:
    """An `Arch` from a Hugging Face config.json (LLaMA/Mistral/Qwen/phi/GPT-NeoX keys); a bad file
    or field is a one-line ValueError naming the file, the key and the fix (`vram.checks`)."""
    if not str(path).strip():
        raise ValueError("the config path is empty: give the path of a config.json (or its folder)")
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    c = checks.read_config(path)
    h = checks.count(c, path, "hidden", ("hidden_size", "n_embd", "d_model"))
    nh = checks.count(c, path, "heads", ("num_attention_heads", "n_head"))
    mt = c.get("model_type") or ""
    neox_or_phi = mt in ("phi", "gpt_neox")
    arch = Arch(
        name=str(c.get("_name_or_path") or path.parent.name or "custom"), hidden=h,   # a label only
        intermediate=checks.count(c, path, "intermediate", ("intermediate_size", "n_inner"), 4 * h),
        layers=checks.count(c, path, "layers", ("num_hidden_layers", "n_layer")), heads=nh,
        kv_heads=checks.count(c, path, "kv_heads", ("num_key_value_heads",), nh),
        vocab=checks.count(c, path, "vocab", ("vocab_size",)),
        head_dim=0 if c.get("head_dim") is None else checks.count(c, path, "head_dim", ("head_dim",)),
        gated=c.get("hidden_act", "silu") in ("silu", "swiglu") and not neox_or_phi,
        rmsnorm="rms_norm_eps" in c and not neox_or_phi,
        bias=bool(c.get("mlp_bias") or neox_or_phi),
        qkv_bias=bool(c.get("attention_bias") or mt.startswith("qwen2")),
        tied=bool(c.get("tie_word_embeddings", not neox_or_phi)),
        parallel=bool(c.get("use_parallel_residual") or mt == "phi"),
        shared_norm=mt == "phi")
    checks.check_arch(arch, f"config {path}: ")
    return arch


def resolve(model: str | Arch) -> Arch:
    """A preset name, a path to a config.json (or its folder), or an `Arch`."""
    if isinstance(model, Arch):
        checks.check_arch(model)
        return model
    key = "" if model is None else str(model).strip()
    if not key:
        raise ValueError(f"no model given ({model!r}): name a preset (e.g. llama-2-7b, smollm2-135m) "
                         "or give a path to a config.json")
    low = ALIASES.get(key.lower(), key.lower())
    if low in PRESETS:
        return PRESETS[low]
    names = list(PRESETS) + list(ALIASES)
    close = difflib.get_close_matches(low.rsplit("/", 1)[-1].removesuffix("-hf"), names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    if key.endswith(".json") or Path(key).expanduser().exists() or "/" in key:
        if not Path(key).expanduser().exists() and not key.endswith(".json") and key.count("/") == 1:
            raise ValueError(f"{key!r} is neither a file nor a preset (the estimator never downloads a hub id): "
                             f"save that model's config.json and give its path, or use a preset ({hint}"
                             f"presets are {', '.join(PRESETS)})")
        return from_config(key)
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
    rope_buffers: int = 0    # fp32 rope buffers of head_dim/2 per model (counted with the weights)


def _hf_rope_buffers() -> int:
    """inv_freq, plus original_inv_freq: a second buffer since transformers 5, an alias in 4.x.

    Read from the installed version's metadata (no import); 2 when transformers is not installed."""
    from importlib import metadata

    try:
        return 2 if int(metadata.version("transformers").split(".")[0]) >= 5 else 1
    except (metadata.PackageNotFoundError, ValueError):
        return 2


STACKS = {
    "hf": Stack("hf", adapter_fp32=True, rms_fp32_copy=True, kbit_fp32_stream=True,
                quantize_lm_head=False, bnb_keeps_input=False, fused_qkv=False, fp32_loss=True,
                rope_buffers=_hf_rope_buffers()),
    "litgpt": Stack("litgpt", adapter_fp32=False, rms_fp32_copy=True,  # litgpt RMSNorm: x.float()
                    kbit_fp32_stream=False, quantize_lm_head=True, bnb_keeps_input=True,
                    fused_qkv=True, fp32_loss=False),
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

    @property
    def required_bytes(self) -> float:
        """What a card must hold: the peak + the allocator's reserve (RESERVED_OVERHEAD) + CUDA context."""
        return self.peak_allocated * (1 + RESERVED_OVERHEAD) + self.breakdown.get("cuda_context", 0)

    def fits(self, capacity_gb: float) -> bool:
        """Whether a card of `capacity_gb` GB (1e9 bytes) holds `required_bytes`."""
        return self.required_bytes <= capacity_gb * GB

    def headroom_gb(self, capacity_gb: float) -> float:
        """GB left on a card of `capacity_gb` GB after `required_bytes` (negative: it does not fit)."""
        return capacity_gb - self.required_bytes / GB

    def gpu_fits(self, gpus: dict[str, float] | None = None) -> list[tuple[str, bool, float]]:
        """(gpu, fits, headroom GB) for each card of `gpus` (default: GPUS)."""
        return [(g, self.fits(cap), self.headroom_gb(cap)) for g, cap in (gpus or GPUS).items()]

    def to_json(self) -> dict:
        s = asdict(self.settings)
        s["targets"] = list(s["targets"])
        return {"total_bytes": int(self.total), "peak_allocated_bytes": int(self.peak_allocated),
                "breakdown": {k: int(v) for k, v in self.breakdown.items()},
                "settings": {"model": self.arch.name, **s}}


def report(est: Estimate) -> str:
    """The human-readable table: total in GB and GiB, the breakdown, then the GPUS it fits."""
    s = est.settings
    what = "all weights" if s.method == "full" else f"r={s.rank} on {','.join(s.targets)}"
    lines = [f"{est.arch.name}: {s.method} ({what}), {s.batch}×{s.seq_len} tokens, {s.dtype}, "
             f"{s.optimizer}{', grad-ckpt' if s.grad_ckpt else ''}",
             f"total: {est.total / GB:.2f} GB = {est.total / GiB:.2f} GiB "
             f"(peak allocated {est.peak_allocated / GB:.2f} GB + CUDA context)"]
    for name, b in est.breakdown.items():
        lines.append(f"  {name:18s} {b / GB:9.3f} GB {b / GiB:9.3f} GiB")
    fits = [g for g, ok, _ in est.gpu_fits() if ok]
    lines.append(f"fits (with {RESERVED_OVERHEAD:.0%} allocator headroom): "
                 + (", ".join(fits) if fits else "none of " + ", ".join(GPUS)))
    return "\n".join(lines)
