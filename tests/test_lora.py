"""peftlab.lora against PEFT's LoRA: outputs and gradients, merge/unmerge, counting, validation.

Compared: our `LoRALinear` and PEFT's `lora.Linear` holding the same weights (a state-dict copy,
PEFT built with init_lora_weights=False so B ≠ 0), over a table of r, alpha, fp32/bf16, base bias
and rsLoRA (dropout off); config-only parameter counts against real PEFT on meta-device models
(the seed's 4,194,304 for LLaMA-2-7B r=8 q,v) and on a tiny GQA Llama.
"""
import contextlib
import copy
import io
import itertools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from peftlab import lora

TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}


class One(nn.Module):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.proj = lin

    def forward(self, x):
        return self.proj(x)


def _pair(r, alpha, dtype, bias, rslora, dropout=0.0, in_f=24, out_f=16):
    torch.manual_seed(0)
    base = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], init_lora_weights=False,
                     use_rslora=rslora, lora_dropout=dropout)
    peft_model = get_peft_model(One(copy.deepcopy(base)), cfg)
    theirs = peft_model.base_model.model.proj
    ours = lora.LoRALinear(copy.deepcopy(base), r, alpha, dropout=dropout, use_rslora=rslora)
    lora.copy_from_peft(ours, theirs)
    return ours, theirs


TABLE = list(itertools.product([1, 8], [1.0, 16.0], [torch.float32, torch.bfloat16], [True, False],
                               [False, True]))


@pytest.mark.parametrize("r,alpha,dtype,bias,rslora", TABLE)
def test_matches_peft_outputs_and_gradients(r, alpha, dtype, bias, rslora):
    ours, theirs = _pair(r, alpha, dtype, bias, rslora)
    assert float(theirs.lora_B["default"].weight.detach().abs().max()) > 0  # B ≠ 0: the comparison can fail
    assert ours.scaling == pytest.approx(theirs.scaling["default"])
    x = torch.randn(5, 24, dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    assert ya.dtype == yb.dtype == dtype
    torch.testing.assert_close(ya, yb, **TOL[dtype])
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL[dtype])
    torch.testing.assert_close(ours.lora_A.weight.grad, theirs.lora_A["default"].weight.grad, **TOL[dtype])
    torch.testing.assert_close(ours.lora_B.weight.grad, theirs.lora_B["default"].weight.grad, **TOL[dtype])
    assert ours.base.weight.grad is None  # W0 frozen


def test_dropout_in_train_mode_matches_peft_with_same_seed():
    ours, theirs = _pair(4, 8.0, torch.float32, True, False, dropout=0.3)
    x = torch.randn(5, 24)
    torch.manual_seed(7)
    ya = ours.train()(x)
    torch.manual_seed(7)
    yb = theirs.train()(x)
    torch.testing.assert_close(ya, yb, **TOL[torch.float32])
    assert not torch.allclose(ya, ours.eval()(x))  # dropout really acted in train mode


def test_scaling_and_init():
    lin = nn.Linear(10, 6)
    assert lora.LoRALinear(lin, 4, 16).scaling == 4.0
    assert lora.LoRALinear(nn.Linear(10, 6), 4, 16, use_rslora=True).scaling == 8.0
    layer = lora.LoRALinear(nn.Linear(10, 6), 4, 16)
    assert layer.lora_A.weight.shape == (4, 10) and layer.lora_B.weight.shape == (6, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: starts at the pretrained model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge_round_trip(dtype):
    ours, _ = _pair(8, 16.0, dtype, True, False)
    W0 = ours.base.weight.detach().clone()
    x = torch.randn(5, 24, dtype=dtype)
    with torch.no_grad():
        y = ours(x)
        ours.merge()
        assert ours.merged
        torch.testing.assert_close(ours(x), y, **TOL[dtype])
        torch.testing.assert_close(ours.base.weight, W0 + ours.delta_weight().to(dtype), **TOL[dtype])
        ours.merge()  # a second merge is a no-op
        ours.unmerge()
    assert not ours.merged
    torch.testing.assert_close(ours.base.weight, W0, **TOL[dtype])
    if dtype == torch.float32:
        assert float((ours.base.weight - W0).abs().max()) < 1e-6


def test_seed_line_llama2_7b_on_meta_device():
    cfg = lora.LLAMA2_CONFIGS["7B"]
    assert lora.count_lora_params(cfg, 8, ["q_proj", "v_proj"]) == 4_194_304
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    assert sum(p.numel() for p in model.parameters()) == lora.count_base_params(cfg) == 6_738_415_616
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        pm.print_trainable_parameters()
    expected = "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"
    assert buf.getvalue().strip() == expected == lora.trainable_line(4_194_304, 6_742_609_920)
    assert (lora.human(4_194_304), lora.human(6_742_609_920)) == ("4.2M", "6.7B")


TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=64)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["k_proj", "down_proj"], "all-linear"])
def test_counts_and_injection_match_peft_on_tiny_llama(targets):
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**TINY))
    pm = get_peft_model(copy.deepcopy(ref), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    trainable, total = pm.get_nb_trainable_parameters()
    assert lora.count_lora_params(TINY, 4, targets) == trainable
    assert lora.count_base_params(TINY) + trainable == total
    ours = copy.deepcopy(ref)
    names = lora.inject(ours, targets, r=4, alpha=8)
    assert len(names) == len(lora.lora_layers(ours)) > 0 and "lm_head" not in names
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == trainable
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():  # B = 0 after injection: outputs unchanged
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits)


def test_adapter_swap_changes_outputs_and_restores():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    lora.inject(model, ["q_proj", "v_proj"], r=2, alpha=4)
    ids = torch.randint(0, 64, (1, 6))
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        for layer in lora.lora_layers(model).values():
            nn.init.normal_(layer.lora_B.weight, std=0.5)
        adapters.append(lora.adapter_state_dict(model))
    with torch.no_grad():
        outs = []
        for state in adapters:
            lora.load_adapter(model, state)
            outs.append(model(ids).logits)
        lora.load_adapter(model, adapters[0])
        assert not torch.allclose(outs[0], outs[1])
        torch.testing.assert_close(model(ids).logits, outs[0])
    with pytest.raises(ValueError, match="keys do not match"):
        lora.load_adapter(model, {"x.lora_A.weight": torch.zeros(1)})


@pytest.mark.parametrize("r,fix", [(0, "r ≥ 1"), (-3, "r ≥ 1"), (17, "pick r ≤ 16"), (2.5, "r ≥ 1")])
def test_bad_rank_says_what_to_do(r, fix):
    with pytest.raises(ValueError, match=fix):
        lora.validate_rank(r, 24, 16)
    with pytest.raises(ValueError, match=fix):
        lora.LoRALinear(nn.Linear(24, 16), r, 8)


def test_unknown_target_lists_existing_names():
    model = LlamaForCausalLM(LlamaConfig(**TINY))
    with pytest.raises(ValueError) as err:
        lora.find_targets(model, ["q_proj", "query"])
    msg = str(err.value)
    assert "'query'" in msg and all(n in msg for n in ("q_proj", "k_proj", "down_proj", "lm_head"))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="pick r ≤ 32"):  # validated before anything changes
        lora.inject(model, "all-linear", r=40, alpha=8)
    assert not lora.lora_layers(model) and model.state_dict().keys() == before.keys()
    with pytest.raises(ValueError, match="nn.Linear"):
        lora.LoRALinear(nn.Conv1d(2, 2, 1), 1, 1)
    with pytest.raises(ValueError, match="choose from"):
        lora.count_lora_params(TINY, 4, ["qkv"])

