"""The counting behind `vram.estimate`: weights, adapters, optimizer, and the saved-for-backward
activations of one decoder block, storage by storage.

    activations = B·T·[block(first) + (L-1)·block(rest) + head] + rope tables

Each saved tensor gets a key; two savers of the same storage use the same key, so a
dict counts it once — the way `vram_measure` dedupes storages. Bytes per token unless
the name says otherwise. See `vram` for the papers and the `Stack` facts.
"""
from __future__ import annotations

import math
from dataclasses import replace

from . import vram as V

_TARGET_ALIASES = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"), "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "wqkv": ("q_proj", "k_proj", "v_proj"), "c_attn": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",), "out_proj": ("o_proj",), "wo": ("o_proj",),
    "fc1": ("up_proj",), "fc_1": ("gate_proj",), "fc_2": ("up_proj",), "fc2": ("down_proj",),
    "dense_h_to_4h": ("up_proj",), "dense_4h_to_h": ("down_proj",), "w1": ("gate_proj",),
    "w3": ("up_proj",), "w2": ("down_proj",), "gate_up_proj": ("gate_proj", "up_proj"),
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",),
}


def normalize_targets(arch: V.Arch, targets) -> tuple[str, ...]:
    """Map linear names (HF/GPT-NeoX/phi spellings, `all-linear`, `lm_head`) to this arch's names."""
    if isinstance(targets, str):
        targets = [t for t in targets.replace(" ", "").split(",") if t]
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
            raise ValueError(f"unknown target module {t!r}: use any of {', '.join(names)}, lm_head, "
                             "all-linear (or the GPT-NeoX/phi names)")
    if not out:
        raise ValueError("targets is empty: name at least one linear module, e.g. q_proj,v_proj")
    return tuple(dict.fromkeys(out))


def _validate(a: V.Arch, s: V.Settings) -> V.Settings:
    for f, allowed in (("method", V.METHODS), ("optimizer", V.OPTIMIZERS), ("dtype", tuple(V.DTYPES)),
                       ("attn", ("sdpa", "eager")), ("device", ("cuda", "cpu")), ("stack", tuple(V.STACKS))):
        if getattr(s, f) not in allowed:
            raise ValueError(f"{f} must be one of {', '.join(allowed)}, got {getattr(s, f)!r}")
    for f in ("seq_len", "batch"):
        if not isinstance(getattr(s, f), int) or getattr(s, f) <= 0:
            raise ValueError(f"{f} must be a positive integer, got {getattr(s, f)!r}")
    if not 0.0 <= s.lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {s.lora_dropout}")
    if s.method == "full":
        return replace(s, targets=())
    if s.stack == "litgpt" and "dora" in s.method:
        raise ValueError("the litgpt stack models LoRA and QLoRA only: use stack='hf' for DoRA")
    targets = normalize_targets(a, s.targets)
    if not isinstance(s.rank, int) or s.rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {s.rank!r}")
    dims = {**a.linears(), "lm_head": (a.hidden, a.vocab)}
    for t in targets:
        if s.rank > min(dims[t]):
            raise ValueError(f"rank {s.rank} is above min(in, out) = {min(dims[t])} of {t}: "
                             "a LoRA rank must be smaller than the layer it adapts")
    return replace(s, targets=targets)


def _nf4_bytes(n: int, dq: bool) -> int:
    """Packed 4-bit codes + absmax per 64 (fp32, or uint8 + fp32 per 256 blocks + 256-entry code)."""
    nb = math.ceil(n / 64)
    consts = nb + 4 * math.ceil(nb / 256) + 4 * 256 if dq else 4 * nb
    return math.ceil(n / 2) + consts + 4 * 16  # + the 16-value NF4 table


def _params(a: V.Arch, s: V.Settings, st: V.Stack) -> tuple[dict, list[int]]:
    """Weight bytes and the numels of the trainable tensors."""
    w = V.DTYPES[s.dtype]
    quant = s.method in ("qlora", "qdora")
    lin = a.linears()
    dense_w = 4 if (quant and st.kbit_fp32_stream) else w       # what stays unquantized
    q_bytes = sum(_nf4_bytes(i * o, s.double_quant) for i, o in lin.values()) * a.layers if quant else 0
    lin_numel = sum(i * o for i, o in lin.values()) * a.layers
    other = a.n_params() - lin_numel                             # embeddings, norms, biases, lm_head
    head_q = quant and st.quantize_lm_head and not a.tied
    if head_q:
        other -= a.vocab * a.hidden
        q_bytes += _nf4_bytes(a.vocab * a.hidden, s.double_quant)
    rope = 2 * (a.hd // 2) * 4 if st.name == "hf" else 0           # inv_freq + original_inv_freq
    weights = (q_bytes + other * dense_w if quant else a.n_params() * w) + rope
    if s.method == "full":
        per_block = [i * o for i, o in lin.values()] + [a.hidden] * (1 if a.shared_norm else 2)
        per_block += [o for n, (_, o) in lin.items() if a.bias or (a.qkv_bias and n[0] in "qkv")]
        tensors = per_block * a.layers + [a.vocab * a.hidden] * (1 if a.tied else 2) + [a.hidden]
        return {"weights": rope, "trainable": weights - rope}, tensors
    dims = {**lin, "lm_head": (a.hidden, a.vocab)}
    tensors = []
    for t in s.targets:
        i, o = dims[t]
        n = 1 if t == "lm_head" else a.layers
        tensors += [s.rank * i, o * s.rank] * n + ([o] * n if "dora" in s.method else [])
    return {"weights": weights, "trainable": sum(tensors) * (4 if st.adapter_fp32 else w)}, tensors


def _optimizer(s: V.Settings, tensors: list[int], pbytes: int) -> int:
    if s.optimizer == "sgd":
        return 0
    if s.optimizer == "paged_adamw_32bit" or s.optimizer == "adamw" and pbytes == 4:
        return sum(2 * 4 * n for n in tensors) + (4 * len(tensors) if s.optimizer == "adamw" else 0)
    if s.optimizer == "adamw":          # torch AdamW keeps states in the parameter dtype
        return sum(2 * pbytes * n for n in tensors) + 4 * len(tensors)
    # bitsandbytes 8-bit: uint8 states + fp32 absmax per 256; tensors < 4096 stay 32-bit
    return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in tensors) + 2 * 256 * 4


def _block(a: V.Arch, s: V.Settings, st: V.Stack, r_in: bool, T: int) -> tuple[dict, int, bool]:
    """Saved storages of one block (bytes per token), bytes saved once per step, and whether the
    block's output requires grad (r_in: whether its input does)."""
    full, quant = s.method == "full", s.method in ("qlora", "qdora")
    x = 4 if (quant and st.kbit_fp32_stream) else V.DTYPES[s.dtype]   # stream / activation bytes
    ad = 4 if st.adapter_fp32 else x                                    # adapter dtype
    h, i, hd = a.hidden, a.intermediate, a.hd
    q, kv = a.heads * hd, a.kv_heads * hd
    tg = set(s.targets)
    keep_in = quant and st.bnb_keeps_input                      # old bnb: 4-bit matmul saves input
    saved: dict[str, int] = {}
    per_step: dict[str, int] = {}          # saved once per step, not per token (DoRA)

    def norm(key_in, key_out, req):
        if not req:
            return
        if a.rmsnorm and st.rms_fp32_copy:
            saved[key_in if x == 4 else key_in + "_fp32"] = 4 * h
            saved[key_out + "_rstd"] = 4
            if full:
                saved[key_out + "_pre"] = h * x
        else:
            saved[key_in] = h * x
            saved[key_out + "_stats"] = 4 if a.rmsnorm else 8

    def linear_in(names, key, d_in, req):
        """What the linears reading storage `key` keep: their input (trainable W, old bnb) or LoRA's."""
        if full or (keep_in and req):
            saved[key] = d_in * x
        mods = [n for n in names if n in tg]
        if st.fused_qkv and mods and names[0] == "q_proj":
            mods = ["qkv"]                                       # Lit-GPT: one LoRA on the fused qkv
            outs = sum(a.linears()[n][1] for n in names if n in tg)
            if len(tg & set(names)) < 3:
                saved["qkv_zeropad"] = outs * x                  # index_copy keeps its source
        for m in mods:
            if s.lora_dropout > 0:                           # CPU keeps a float noise tensor
                if req:                                      # no mask unless the input needs grad
                    saved[m + "_mask"] = d_in * (1 if s.device == "cuda" else ad)
                saved[m + "_drop"] = d_in * ad
            elif ad != x:
                saved[m + "_cast"] = d_in * ad
            else:
                saved[key] = d_in * x
            width = len(tg & set(names)) if m == "qkv" else 1
            saved[m + "_A"] = s.rank * width * ad
            if "dora" in s.method:                           # base and LoRA results, for |m|'s grad
                saved[m + "_dora"] = a.linears()[m][1] * (ad + x)
                per_step[m] = 2 * a.linears()[m][1] * ad        # per step: ‖W+sBA‖ and m/‖·‖

    norm("x_in", "n1", r_in)
    linear_in(["q_proj", "k_proj", "v_proj"], "n1", h, r_in)
    rq, rk, rv = (r_in or full or n in tg for n in ("q_proj", "k_proj", "v_proj"))
    r_att = rq or rk or rv
    if r_att and s.attn == "eager":        # matmul keeps each operand only for the other's grad
        k_rep = q if kv != q else kv
        saved.update({"q_rot": q * x} if rk else {}, **({"k_rep": k_rep * x} if rq else {}))
        if rq or rk:
            saved.update(probs=a.heads * T * 4, v_rep=k_rep * x)
        if rv:
            saved["probs" if x == 4 else "probs_cast"] = a.heads * T * x
    elif r_att:                            # SDPA keeps q, k, v, out and the log-sum-exp
        k_sdpa = q if (st.fused_qkv and kv != q) else kv
        saved.update(q_rot=q * x, k_rot=k_sdpa * x, out=q * x, lse=a.heads * 4)
        mha_view = st.fused_qkv and kv == q                     # Lit-GPT: v is a view of fused qkv
        saved["qkv" if mha_view else "v"] = (q + 2 * kv if mha_view else k_sdpa) * x
    # o_proj reads SDPA's output transposed to (B, T, h): the CPU kernel allocates it in that
    # layout (a view, same storage); CUDA flash/mem-efficient allocate it like q (a copy)
    o_key = "out" if s.attn == "sdpa" and s.device == "cpu" else "attn_out"
    linear_in(["o_proj"], o_key, q, r_att)
    r_att = r_att or "o_proj" in tg
    r_mid = r_in if a.parallel else (r_in or r_att)             # does the MLP's input need grad?
    if a.parallel and a.shared_norm:
        n2 = "n1"
    elif a.parallel:
        n2 = "n2"
        norm("x_in", "n2", r_in)
    else:
        n2 = "n2"
        norm("x_mid", "n2", r_mid)
    up = ["gate_proj", "up_proj"] if a.gated else ["up_proj"]
    linear_in(up, n2, h, r_mid)
    r_fc = r_mid or full or bool(tg & set(up))
    if r_fc:
        saved.update({"fc_out": i * x, "act_out": i * x, "up_out": i * x} if a.gated else {"fc_out": i * x})
    linear_in(["down_proj"], "mid", i, r_fc)
    return saved, sum(per_step.values()), r_in or r_att or r_fc or "down_proj" in tg


def estimate(model, settings: V.Settings | None = None, **kw) -> V.Estimate:
    """Predict the peak of one training step; `settings` or keyword overrides of `Settings`."""
    a = V.resolve(model)
    s = _validate(a, replace(settings or V.Settings(), **kw))
    st = V.STACKS[s.stack]
    T, N = s.seq_len, s.seq_len * s.batch
    quant = s.method in ("qlora", "qdora")
    x = 4 if (quant and st.kbit_fp32_stream) else V.DTYPES[s.dtype]
    par, tensors = _params(a, s, st)
    pbytes = V.DTYPES[s.dtype] if s.method == "full" else (4 if st.adapter_fp32 else x)
    first, ps_first, r = _block(a, s, st, s.method == "full", T)
    rest, ps_rest, r_out = _block(a, s, st, r, T)
    if s.grad_ckpt:                                               # keep only each block's input
        blocks = a.layers * a.hidden * x
        blocks_detail = {"block inputs (checkpoints)": N * blocks}
    else:
        blocks = sum(first.values()) + (a.layers - 1) * sum(rest.values())
        blocks_detail = {"blocks": N * blocks}
    head_q = quant and st.quantize_lm_head and not a.tied
    head_in = 4 if (a.rmsnorm and st.rms_fp32_copy) else x
    head = (head_in * a.hidden + 4) if r_out else 0                # final norm
    if s.method == "full" or (head_q and st.bnb_keeps_input):      # lm_head keeps its input
        head += a.hidden * x
    if s.method == "full":                                         # final norm's normalized x, ids
        head += (a.hidden * x if a.rmsnorm and st.rms_fp32_copy else 0) + 8
    if "lm_head" in s.targets:                                     # LoRA on lm_head keeps (a cast of) it
        head += a.hidden * (4 if st.adapter_fp32 else x) + s.rank * (4 if st.adapter_fp32 else x)
    head += a.vocab * (4 if st.fp32_loss else x) + 8               # log-softmax kept by the loss, labels
    rope = 2 * T * a.hd * x if st.name == "hf" and not s.grad_ckpt else 0   # cos, sin (batch 1)
    per_step = 0 if s.grad_ckpt else ps_first + (a.layers - 1) * ps_rest
    act = N * (blocks + head) + rope + per_step + 4                # + the loss scalar
    detail = {**blocks_detail, "head and loss": N * head, "rope tables": rope, "DoRA per step": per_step}
    # temporaries: logits held through backward + the larger of the loss backward and one block's
    logits = N * a.vocab * x
    loss_bwd = 2 * N * a.vocab * 4 if st.fp32_loss else 2 * min(N, 128 * s.batch) * a.vocab * x
    loss_bwd += a.vocab * a.hidden * V.DTYPES[s.dtype] if head_q else 0
    ws = N * ((3 if a.gated else 2) * a.intermediate + 4 * a.hidden) * x
    ws += max(i * o for i, o in a.linears().values()) * V.DTYPES[s.dtype] if quant else 0
    ws += N * sum(rest.values()) if s.grad_ckpt else 0            # the block being recomputed
    temps = logits + max(loss_bwd, ws)
    bd = {"weights": par["weights"], "trainable params": par["trainable"],
          "gradients": sum(tensors) * pbytes, "optimizer": _optimizer(s, tensors, pbytes),
          "activations": int(act), "temporaries": int(temps),
          "cuda_context": V.CUDA_CONTEXT if s.device == "cuda" else 0}
    return V.Estimate(arch=a, settings=s, breakdown={k: int(v) for k, v in bd.items()}, detail=detail)
