"""The counting behind `vram.estimate`: weights, adapters, optimizer states, and the tensors autograd
saves for backward, storage by storage.

    activations = B·T·[block(first) + (L−1)·block(rest) + head] + rope tables

Each saved tensor gets a key; two savers of the same storage use the same key, so a dict
counts it once — the way `vram.measure` dedupes storages. Bytes are per token unless the name
says otherwise. One block is counted in named steps, in the order its forward runs (LLaMA,
Touvron et al. 2023; the accounting of Korthikanti et al. 2022, arXiv:2205.05198, for what a
LoRA step keeps): `norm_saved` → `linear_saved` + `lora_saved` for q, k, v → `attention_saved`
→ o_proj → `norm_saved` → gate/up → `mlp_saved` → down_proj. The facts about the code that
runs (`Stack`) decide which bytes are kept; see `vram.spec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from . import checks
from .spec import (CUDA_CONTEXT, DTYPES, METHODS, OPTIMIZERS, STACKS, Arch, Estimate, Settings, Stack,
                   resolve)

_QKV = ("q_proj", "k_proj", "v_proj")
_TARGET_ALIASES = {
    "query_key_value": _QKV, "qkv_proj": _QKV, "wqkv": _QKV, "c_attn": _QKV,
    "dense": ("o_proj",), "out_proj": ("o_proj",), "wo": ("o_proj",),
    "fc1": ("up_proj",), "fc_1": ("gate_proj",), "fc_2": ("up_proj",), "fc2": ("down_proj",),
    "dense_h_to_4h": ("up_proj",), "dense_4h_to_h": ("down_proj",), "w1": ("gate_proj",),
    "w3": ("up_proj",), "w2": ("down_proj",), "gate_up_proj": ("gate_proj", "up_proj"),
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",),
}


def normalize_targets(arch: Arch, targets) -> tuple[str, ...]:
    """Map linear names (HF/GPT-NeoX/phi spellings, `all-linear`, `lm_head`) to this arch's names."""
    if not isinstance(targets, (str, list, tuple)) or not all(isinstance(t, str) for t in targets):
        raise ValueError(f"targets must be a comma-separated string or a list of linear names, got "
                         f"{targets!r}: e.g. 'q_proj,v_proj' or 'all-linear'")
    if isinstance(targets, str):                                 # commas or spaces between names
        targets = targets.replace(",", " ").split()
    names = list(arch.linears())
    out: list[str] = []
    for t in targets:
        key = t.strip().lower()
        if key in ("all-linear", "all_linear", "all"):
            out += names
        elif key == "lm_head":
            out.append("lm_head")
        elif key in names:
            out.append(key)
        elif key in _TARGET_ALIASES and all(n in names for n in _TARGET_ALIASES[key]):
            out += list(_TARGET_ALIASES[key])
        else:
            sep = " (separate names with commas)" if any(c in t for c in ";:|/") else ""
            raise ValueError(f"unknown target module {t!r}{sep}: use any of {', '.join(names)}, lm_head, "
                             "all-linear (or the GPT-NeoX/phi names)")
    if not out:
        raise ValueError("targets is empty: name at least one linear module, e.g. q_proj,v_proj")
    return tuple(dict.fromkeys(out))


def _validate(a: Arch, s: Settings) -> Settings:
    checks.check_settings(s, {"method": METHODS, "optimizer": OPTIMIZERS, "dtype": tuple(DTYPES),
                              "attn": ("sdpa", "eager"), "device": ("cuda", "cpu"), "stack": tuple(STACKS)})
    if s.method == "full":
        return replace(s, targets=())
    if s.stack == "litgpt" and "dora" in s.method:
        raise ValueError("the litgpt stack models LoRA and QLoRA only: use stack='hf' for DoRA")
    targets = normalize_targets(a, s.targets)
    dims = {**a.linears(), "lm_head": (a.hidden, a.vocab)}
    for t in targets:
        if s.rank > min(dims[t]):
            raise ValueError(f"rank {s.rank} is above min(in, out) = {min(dims[t])} of {t}: "
                             "a LoRA rank must be smaller than the layer it adapts")
    return replace(s, targets=targets)


# --- parameters and optimizer states ------------------------------------------------------------

def _nf4_bytes(n: int, dq: bool) -> int:
    """Packed 4-bit codes + absmax per 64 (fp32, or uint8 + fp32 per 256 blocks + 256-entry code
    + the fp32 offset subtracted before the second quantization)."""
    nb = math.ceil(n / 64)
    consts = nb + 4 * math.ceil(nb / 256) + 4 * 256 + 4 if dq else 4 * nb
    return math.ceil(n / 2) + consts + 4 * 16  # + the 16-value NF4 table


def _params(a: Arch, s: Settings, st: Stack) -> tuple[dict, list[int]]:
    """Weight bytes and the numels of the trainable tensors."""
    w = DTYPES[s.dtype]
    quant = s.method in ("qlora", "qdora")
    lin = a.linears()
    dense_w = 4 if (quant and st.kbit_fp32_stream) else w       # what stays unquantized
    q_bytes = sum(_nf4_bytes(i * o, s.double_quant) for i, o in lin.values()) * a.layers if quant else 0
    lin_numel = sum(i * o for i, o in lin.values()) * a.layers
    other = a.n_params() - lin_numel                             # embeddings, norms, biases, lm_head
    if quant and st.quantize_lm_head and not a.tied:
        other -= a.vocab * a.hidden
        q_bytes += _nf4_bytes(a.vocab * a.hidden, s.double_quant)
    rope = st.rope_buffers * (a.hd // 2) * 4                      # inv_freq (+ original_inv_freq), fp32
    weights = (q_bytes + other * dense_w if quant else a.n_params() * w) + rope
    if s.method == "full":
        per_block = [i * o for i, o in lin.values()] + [a.hidden] * (1 if a.shared_norm else 2)
        per_block += [o for n, (_, o) in lin.items() if a.has_bias(n)]
        tensors = per_block * a.layers + [a.vocab * a.hidden] * (1 if a.tied else 2) + [a.hidden]
        return {"weights": rope, "trainable": weights - rope}, tensors
    dims = {**lin, "lm_head": (a.hidden, a.vocab)}
    tensors = []
    for t in s.targets:                                          # A (r, in), B (out, r), DoRA m (out,)
        i, o = dims[t]
        n = 1 if t == "lm_head" else a.layers
        tensors += [s.rank * i, o * s.rank] * n + ([o] * n if "dora" in s.method else [])
    return {"weights": weights, "trainable": sum(tensors) * (4 if st.adapter_fp32 else w)}, tensors


def _optimizer(s: Settings, tensors: list[int], pbytes: int) -> int:
    """Optimizer state bytes (AdamW: m and v per parameter). torch AdamW's 0-d `step` counters stay
    on the CPU (not fused/capturable), so they are not GPU memory and peftlab.memory skips them too."""
    if s.optimizer == "sgd":
        return 0
    if s.optimizer == "paged_adamw_32bit" or s.optimizer == "adamw" and pbytes == 4:
        return sum(2 * 4 * n for n in tensors)
    if s.optimizer == "adamw":          # torch AdamW keeps states in the parameter dtype
        return sum(2 * pbytes * n for n in tensors)
    # bitsandbytes 8-bit: uint8 states + fp32 absmax per 256; tensors < 4096 stay 32-bit
    return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in tensors) + 2 * 256 * 4


# --- one decoder block: what autograd keeps, step by step ---------------------------------------

@dataclass
class _Block:
    """One block's accounting: the run's facts, and the storages saved so far."""
    arch: Arch
    run: Settings
    stack: Stack
    seq_len: int              # T (the eager softmax keeps T×T per head)
    x: int                    # bytes of one element of the residual stream / activations
    ad: int                   # bytes of one adapter element (PEFT: fp32)
    saved: dict = field(default_factory=dict)     # key -> bytes per token (one key per storage)
    per_step: dict = field(default_factory=dict)  # module -> bytes kept once per step, not per token (DoRA)

    @property
    def full(self) -> bool:
        return self.run.method == "full"

    @property
    def targets(self) -> set:
        return set(self.run.targets)


def norm_saved(b: _Block, key_in: str, key_out: str, needs_grad: bool) -> None:
    """RMSNorm / LayerNorm reading storage `key_in`. HF's LlamaRMSNorm computes in fp32
    (`hidden_states.to(torch.float32)`) and autograd keeps that copy and the 1/rms; LayerNorm
    keeps its input and mean + rstd. A trainable norm weight also keeps the normalized x."""
    if not needs_grad:
        return
    h, x = b.arch.hidden, b.x
    if b.arch.rmsnorm and b.stack.rms_fp32_copy:
        b.saved[key_in if x == 4 else key_in + "_fp32"] = 4 * h    # an fp32 stream needs no copy
        b.saved[key_out + "_rstd"] = 4
        if b.full:
            b.saved[key_out + "_pre"] = h * x
    else:
        b.saved[key_in] = h * x
        b.saved[key_out + "_stats"] = 4 if b.arch.rmsnorm else 8


def linear_saved(b: _Block, key: str, d_in: int, needs_grad: bool) -> None:
    """The base linear reading storage `key`: a frozen W keeps nothing of its input (the input
    gradient needs only W); a trainable W keeps its input for dW = gᵀx; bitsandbytes ≤ 0.4x
    MatMul4Bit kept its input A even when W is frozen (Stack.bnb_keeps_input)."""
    keep_in = b.run.method in ("qlora", "qdora") and b.stack.bnb_keeps_input
    if b.full or (keep_in and needs_grad):
        b.saved[key] = d_in * b.x


def lora_saved(b: _Block, names: list[str], key: str, d_in: int, needs_grad: bool) -> None:
    """The adapters on the linears `names` reading storage `key`. PEFT's lora.Linear.forward runs
    `lora_B(lora_A(dropout(x)))` with x cast to lora_A's dtype: A keeps its (cast) input, dropout
    its mask, B keeps A's output (r wide). DoRA (Liu et al. 2024, arXiv:2402.09353) also keeps the
    base and LoRA results for m's gradient, and once per step ‖W + sBA‖ and m/‖·‖."""
    a, s, x, ad, tg = b.arch, b.run, b.x, b.ad, b.targets  # short names for the formulas
    mods = [n for n in names if n in tg]
    if b.stack.fused_qkv and mods and names[0] == "q_proj":
        mods = ["qkv"]                                       # Lit-GPT: one LoRA on the fused qkv
        outs = sum(a.linears()[n][1] for n in names if n in tg)
        if len(tg & set(names)) < 3:
            b.saved["qkv_zeropad"] = outs * x                # index_copy keeps its source
    for m in mods:
        if s.lora_dropout > 0:                               # CPU keeps a float noise tensor
            if needs_grad:                                   # no mask unless the input needs grad
                b.saved[m + "_mask"] = d_in * (1 if s.device == "cuda" else ad)
            b.saved[m + "_drop"] = d_in * ad
        elif ad != x:
            b.saved[m + "_cast"] = d_in * ad                 # x.to(lora_A.weight.dtype): a copy
        else:
            b.saved[key] = d_in * x                          # the same storage as the input
        width = len(tg & set(names)) if m == "qkv" else 1
        b.saved[m + "_A"] = s.rank * width * ad
        if "dora" in s.method:                               # base and LoRA results, for |m|'s grad
            out = a.linears()[m][1]
            b.saved[m + "_dora"] = out * (ad + x)
            b.per_step[m] = 2 * out * ad                     # per step: ‖W+sBA‖ and m/‖·‖


def attention_saved(b: _Block, rq: bool, rk: bool, rv: bool) -> None:
    """Attention after RoPE, given which of q, k, v need a gradient. SDPA (flash / memory-efficient)
    keeps q, k, v, its output and a log-sum-exp per head; eager attention keeps each matmul's
    operands for the other's gradient and the T×T softmax (fp32 in HF, cast to the stream dtype)."""
    a, st, x = b.arch, b.stack, b.x
    q, kv = a.heads * a.hd, a.kv_heads * a.hd
    if not (rq or rk or rv):
        return
    if b.run.attn == "eager":
        rep = q                                              # repeat_kv: k and v at every query head
        if rk:
            b.saved["q_rot"] = q * x
        if rq:
            b.saved["k_rep"] = rep * x
        if rq or rk:
            b.saved.update(probs=a.heads * b.seq_len * 4, v_rep=rep * x)
        if rv:
            b.saved["probs" if x == 4 else "probs_cast"] = a.heads * b.seq_len * x
        return
    k_sdpa = q if (st.fused_qkv and kv != q) else kv         # Lit-GPT expands k, v before SDPA
    b.saved.update(q_rot=q * x, k_rot=k_sdpa * x, out=q * x, lse=a.heads * 4)
    mha_view = st.fused_qkv and kv == q                      # Lit-GPT: v is a view of fused qkv
    b.saved["qkv" if mha_view else "v"] = (q + 2 * kv if mha_view else k_sdpa) * x


def mlp_saved(b: _Block) -> None:
    """The MLP between up and down projections (when its output needs grad): SwiGLU keeps
    gate's output, silu(gate) and up's output (three (T, i) tensors); a GELU MLP keeps fc's output."""
    i, x = b.arch.intermediate, b.x
    if b.arch.gated:
        b.saved.update(fc_out=i * x, act_out=i * x, up_out=i * x)
    else:
        b.saved["fc_out"] = i * x


def linears_saved(b: _Block, names: list[str], key: str, d_in: int, needs_grad: bool) -> None:
    """The linears `names` reading storage `key` (d_in wide): the base weights, then their adapters."""
    linear_saved(b, key, d_in, needs_grad)
    lora_saved(b, names, key, d_in, needs_grad)


def _block(a: Arch, s: Settings, st: Stack, r_in: bool, T: int) -> tuple[dict, int, bool]:
    """Saved storages of one block (bytes per token), bytes saved once per step, and whether the
    block's output requires grad (r_in: whether its input does)."""
    quant = s.method in ("qlora", "qdora")
    x = 4 if (quant and st.kbit_fp32_stream) else DTYPES[s.dtype]
    b = _Block(arch=a, run=s, stack=st, seq_len=T, x=x, ad=4 if st.adapter_fp32 else x)
    tg, full = b.targets, b.full
    # r_in, r_att, r_mid, r_fc: whether the block input, the attention output, the MLP input and
    # the MLP activations require grad (nothing upstream of the first trainable tensor is kept)

    # attention branch: norm → q, k, v → SDPA → o_proj
    norm_saved(b, "x_in", "n1", r_in)
    linears_saved(b, list(_QKV), "n1", a.hidden, r_in)
    rq, rk, rv = (r_in or full or n in tg for n in _QKV)
    attention_saved(b, rq, rk, rv)
    r_att = rq or rk or rv
    # o_proj reads SDPA's output transposed to (B, T, h): the CPU kernel allocates it in that
    # layout (a view, same storage); CUDA flash/mem-efficient allocate it like q (a copy)
    o_key = "out" if s.attn == "sdpa" and s.device == "cpu" else "attn_out"
    linears_saved(b, ["o_proj"], o_key, a.heads * a.hd, r_att)
    r_att = r_att or "o_proj" in tg
    # MLP branch: its own norm (on the block input when the residual is parallel, shared in phi)
    r_mid = r_in if a.parallel else (r_in or r_att)             # does the MLP's input need grad?
    if a.parallel and a.shared_norm:
        n2 = "n1"
    else:
        n2 = "n2"
        norm_saved(b, "x_in" if a.parallel else "x_mid", "n2", r_in if a.parallel else r_mid)
    up = ["gate_proj", "up_proj"] if a.gated else ["up_proj"]
    linears_saved(b, up, n2, a.hidden, r_mid)
    r_fc = r_mid or full or bool(tg & set(up))
    if r_fc:
        mlp_saved(b)
    linears_saved(b, ["down_proj"], "mid", a.intermediate, r_fc)
    return b.saved, sum(b.per_step.values()), r_in or r_att or r_fc or "down_proj" in tg


# --- the head, the loss and the step's temporaries ----------------------------------------------

def _head_saved(a: Arch, s: Settings, st: Stack, x: int, r_out: bool) -> int:
    """Bytes per token kept by the final norm, lm_head (+ its LoRA) and the loss."""
    quant = s.method in ("qlora", "qdora")
    head_q = quant and st.quantize_lm_head and not a.tied
    head_in = 4 if (a.rmsnorm and st.rms_fp32_copy) else x
    head = (head_in * a.hidden + 4) if r_out else 0                # final norm
    if s.method == "full" or (head_q and st.bnb_keeps_input):      # lm_head keeps its input
        head += a.hidden * x
    if s.method == "full":                                         # final norm's normalized x, ids
        head += (a.hidden * x if a.rmsnorm and st.rms_fp32_copy else 0) + 8
    if "lm_head" in s.targets:                                     # LoRA on lm_head keeps (a cast of) it
        head += a.hidden * (4 if st.adapter_fp32 else x) + s.rank * (4 if st.adapter_fp32 else x)
    return head + a.vocab * (4 if st.fp32_loss else x) + 8         # log-softmax kept by the loss, labels


def _temporaries(a: Arch, s: Settings, st: Stack, x: int, block_rest: int) -> int:
    """The logits held through backward + the larger of the loss backward and one block's
    gradient working set (+ the dequantized weight with 4-bit, the recomputed block with checkpointing)."""
    N = s.seq_len * s.batch
    quant = s.method in ("qlora", "qdora")
    logits = N * a.vocab * x
    loss_bwd = 2 * N * a.vocab * 4 if st.fp32_loss else 2 * min(N, 128 * s.batch) * a.vocab * x
    loss_bwd += a.vocab * a.hidden * DTYPES[s.dtype] if (quant and st.quantize_lm_head and not a.tied) else 0
    ws = N * ((3 if a.gated else 2) * a.intermediate + 4 * a.hidden) * x
    ws += max(i * o for i, o in a.linears().values()) * DTYPES[s.dtype] if quant else 0
    ws += N * block_rest if s.grad_ckpt else 0                    # the block being recomputed
    return logits + max(loss_bwd, ws)


def estimate(model, settings: Settings | None = None, **kw) -> Estimate:
    """Predict the peak of one training step; `settings` or keyword overrides of `Settings`."""
    a = resolve(model)
    s = _validate(a, checks.settings_from(Settings() if settings is None else settings, kw))
    st = STACKS[s.stack]
    T, N = s.seq_len, s.seq_len * s.batch
    quant = s.method in ("qlora", "qdora")
    x = 4 if (quant and st.kbit_fp32_stream) else DTYPES[s.dtype]
    par, tensors = _params(a, s, st)
    pbytes = DTYPES[s.dtype] if s.method == "full" else (4 if st.adapter_fp32 else x)
    first, ps_first, r = _block(a, s, st, s.method == "full", T)   # the first block's input is frozen
    rest, ps_rest, r_out = _block(a, s, st, r, T)
    if s.grad_ckpt:                                               # keep only each block's input
        blocks = a.layers * a.hidden * x
        blocks_detail = {"block inputs (checkpoints)": N * blocks}
    else:
        blocks = sum(first.values()) + (a.layers - 1) * sum(rest.values())
        blocks_detail = {"blocks": N * blocks}
    head = _head_saved(a, s, st, x, r_out)
    rope = 2 * T * a.hd * x if st.name == "hf" and not s.grad_ckpt else 0   # cos, sin (batch 1)
    per_step = 0 if s.grad_ckpt else ps_first + (a.layers - 1) * ps_rest
    act = N * (blocks + head) + rope + per_step + 4                # + the loss scalar
    detail = {**blocks_detail, "head and loss": N * head, "rope tables": rope, "DoRA per step": per_step}
    bd = {"weights": par["weights"], "trainable params": par["trainable"],
          "gradients": sum(tensors) * pbytes, "optimizer": _optimizer(s, tensors, pbytes),
          "activations": int(act), "temporaries": int(_temporaries(a, s, st, x, sum(rest.values()))),
          "cuda_context": CUDA_CONTEXT if s.device == "cuda" else 0}
    return Estimate(arch=a, settings=s, breakdown={k: int(v) for k, v in bd.items()}, detail=detail)
