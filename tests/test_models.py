"""Model sources and loading: the embedded checkpoint, 4-bit through BitsAndBytesConfig,
the bitsandbytes CPU guard (gradients compared with a dense matmul on the dequantized
weight), and a one-line error with the fix for every bad source."""
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model

from peftlab import memory, models, settings

bnb = models.import_bitsandbytes()


# --- loading ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_4bit(embedded_ready):
    return models.load_model(bits=4, dtype=torch.bfloat16)


def test_embedded_dense_and_4bit_footprint(embedded_ready, model_4bit):
    dense = models.load_model(dtype=torch.bfloat16)
    assert type(dense).__name__ == "LlamaForCausalLM"
    assert dense.config.num_hidden_layers == 30 and dense.config.hidden_size == 576
    n = sum(p.numel() for p in dense.parameters())
    assert 134_000_000 < n < 135_000_000
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model_4bit.modules())
    assert n4 == 30 * 7  # q, k, v, o, gate, up, down in each block; lm_head stays 16-bit
    ratio = memory.footprint_bytes(model_4bit) / memory.footprint_bytes(dense)
    assert ratio <= 0.45, ratio


def test_double_quant_shrinks_constants(embedded_ready, model_4bit):
    plain = models.load_model(bits=4, dtype=torch.bfloat16, double_quant=False)
    saved = memory.footprint_bytes(plain) - memory.footprint_bytes(model_4bit)
    layers = [m for m in plain.modules() if isinstance(m, bnb.nn.Linear4bit)]
    quantized = sum(m.weight.quant_state.shape.numel() for m in layers)
    # 0.5 - 0.127 bit per quantized weight (QLoRA §3), in bytes, less the 256-entry fp32 code
    # table each double-quantized layer keeps for its 8-bit constants
    expected = quantized * (0.5 - 0.127) / 8 - len(layers) * 256 * 4
    assert saved == pytest.approx(expected, rel=0.01)


def test_load_model_reads_no_profile(embedded_ready, monkeypatch):
    monkeypatch.setattr(settings, "profile", lambda: pytest.fail("load_model read the session profile"))
    monkeypatch.delenv("PEFTLAB_MODEL", raising=False)
    model = models.load_model(dtype="bf16", device="cpu")  # "bf16" as a string is accepted too
    p = next(model.parameters())
    assert p.dtype == torch.bfloat16 and p.device.type == "cpu"
    assert models.default_dtype("cpu") == torch.float32 and models.default_device() in ("cpu", "cuda")
    assert models.resolve_source(None) == str(embedded_ready)


@pytest.mark.parametrize("kw, pattern", [(dict(dtype="int8"), "dtype must be a torch dtype or one of bf16"),
                                         (dict(device="tpu"), "device must be 'cpu' or 'cuda'")])
def test_load_model_arguments_validated(kw, pattern):
    with pytest.raises(ValueError, match=pattern) as err:
        models.load_model(**kw)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU is visible here: load with device='cpu'"):
        models.load_model(device="cuda")


def test_atomic_folder_replaces_or_leaves_as_it_was(tmp_path):
    target = tmp_path / "out"
    with models.atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with models.atomic_folder(target) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "a").read_text() == "1"
    with models.atomic_folder(target) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]         # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]           # nothing hidden left behind
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ValueError, match="is a file"):
        with models.atomic_folder(tmp_path / "f"):
            pass
    assert (tmp_path / "f").read_text() == "mine"


def test_tokenizer_chat_template(embedded_ready):
    tok = models.load_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert tok.pad_token is not None


# --- the bitsandbytes CPU guard ------------------------------------------------------------

def _layer(guard: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    # No bias, like the projections LoRA adapts. With a bias, a real AVX512-BF16 CPU raises instead of
    # losing the gradient silently (an in-place bias add on the repacked kernel's output).
    dense = torch.nn.Linear(128, 64, bias=False)
    q = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    q.load_state_dict(dense.state_dict())
    q = q.to("cpu")  # quantizes
    # What bitsandbytes sets on a CPU with AVX512-BF16 (docs/findings.md, the repack bug); forced here so
    # the test shows the pitfall on every CPU.
    q.support_avx512bf16_for_cpu = True
    if guard:
        models.guard_4bit(q)
    return q


def _input_grad_after_eval(q: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    w = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)  # (out, in)
    q.eval()
    with torch.no_grad():
        q(torch.randn(4, 128))  # an evaluation pass, e.g. scoring the base model first
    q.train()
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (q(x) ** 2).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    ((xr @ w.T) ** 2).sum().backward()
    return x.grad, xr.grad


# The repack pitfall was seen with these bitsandbytes releases (pinned and floor); bitsandbytes < 0.49 has
# no CPU repacking at all. Other releases get a report (a skip that says what was seen), not an assert.
REPACK_BUG_SEEN_IN = ("0.50.0", "0.50.2")


def test_unguarded_layer_loses_input_gradient():
    grad, ref = _input_grad_after_eval(_layer(guard=False))
    lost = grad is None or not torch.allclose(grad, ref, atol=1e-3)
    if bnb.__version__ not in REPACK_BUG_SEEN_IN and not lost:
        pytest.skip(f"repack pitfall not observed with bitsandbytes {bnb.__version__} "
                    f"(seen in {', '.join(REPACK_BUG_SEEN_IN)}); the guard test below still applies")
    assert lost, "pitfall no longer reproduces"


def test_guarded_layer_gradient_matches_dense_reference():
    grad, ref = _input_grad_after_eval(_layer(guard=True))
    assert grad is not None
    torch.testing.assert_close(grad, ref, atol=1e-4, rtol=1e-4)


def test_loaded_4bit_lora_trains_after_eval(embedded_ready):
    model = models.load_model(bits=4)
    for m in model.modules():  # as on an AVX512-BF16 CPU; load_model's guard must win
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    models.guard_4bit(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 2]])
    peft_model.eval()
    with torch.no_grad():
        peft_model.generate(ids, max_new_tokens=3, do_sample=False)
    peft_model.train()
    peft_model(input_ids=ids, labels=ids).loss.backward()
    layer0 = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    # B starts at zero, so A's gradient is zero at step 0; B's gradient depends on the input
    # that reaches layer 0 — only there if every later 4-bit layer passed gradients back.
    assert layer0.lora_B["default"].weight.grad.abs().sum() > 0
    assert all(not getattr(m.weight.quant_state, "packing_format_for_cpu", False)
               for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit))


# --- bad sources: one line, with the fix ---------------------------------------------------

def test_unprepared_cache_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    with pytest.raises(models.ModelError, match="peftlab prepare"):
        models.load_model()


def test_half_written_checkpoint_is_not_accepted(tmp_path, monkeypatch, embedded_ready):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    half = models.embedded_path()
    half.mkdir(parents=True)
    shutil.copy(embedded_ready / "config.json", half)  # no weights, no PREPARED marker
    assert not models.is_prepared()
    with pytest.raises(models.ModelError, match="not prepared"):
        models.resolve_source("embedded")


def test_corrupted_cache_file(tmp_path, monkeypatch, embedded_ready):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    bad = models.embedded_path()
    shutil.copytree(embedded_ready, bad, ignore=shutil.ignore_patterns("model.safetensors"))
    (bad / "model.safetensors").write_bytes((embedded_ready / "model.safetensors").read_bytes()[:4096])
    with pytest.raises(models.ModelError, match=r"(damaged|corrupted).*peftlab prepare --force"):
        models.load_model()


def test_interrupted_prepare_leaves_nothing_loadable(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))

    def boom(*a, **k):  # the weights are written, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        models.prepare(install=False)
    assert not models.is_prepared()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind


@pytest.mark.parametrize("name, pattern", [
    ("gpt-5-super", r"unknown model 'gpt-5-super'.*embedded"),
    ("./no/such/folder", r"unknown model.*local folder"),
    ("meta-llama/Llama-2-7b-hf", r"not downloaded and HF_HUB_OFFLINE=1.*embedded"),
])
def test_bad_model_names(name, pattern, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match=pattern) as info:
        models.resolve_source(name)
    assert "\n" not in str(info.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(models.ModelError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_bits_validated():
    with pytest.raises(ValueError, match="bits must be None"):
        models.load_model(bits=8)
