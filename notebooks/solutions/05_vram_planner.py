"""Solutions to notebook 05's exercises (LoRA's parameter terms, the weights of a QLoRA base)."""


def my_lora_terms(arch, rank, targets):
    dims = arch.linears()                                               # {name: (in, out)}
    adapter = sum(rank * (dims[t][0] + dims[t][1]) for t in targets) * arch.layers   # A (r, in) + B (out, r)
    return {"weights": 2 * arch.n_params(),                             # bf16 base
            "trainable params": 4 * adapter,                            # PEFT: fp32 adapters
            "gradients": 4 * adapter,
            "optimizer": 2 * 4 * adapter}                               # AdamW: m and v in fp32


def my_qlora_weights(arch, double_quant):
    lin = sum(i * o for i, o in arch.linears().values()) * arch.layers  # the quantized linears
    consts = 8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64      # bits per weight
    return lin * (4 + consts) / 8 + 4 * (arch.n_params() - lin)         # the rest in fp32 (kbit preparation)
