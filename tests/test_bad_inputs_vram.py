"""The VRAM estimator on bad and edge inputs (issue 19, class 8): each bad config.json, setting,
model name or command line vs the one-line message it must give (file, field and fix named) through
the Python API (`vram.from_config`, `vram.estimate`) and `peftlab estimate` (exit code 2, one line
on stderr, no traceback); valid neighbours vs the estimate they must give; and a sweep of edge
values vs the rule that no total, term or printed number is nan, inf or negative."""
from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys

import pytest

from peftlab import cli, vram
from peftlab.vram import checks

BASE = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5)


def cfg(**kw) -> str:
    return json.dumps({k: v for k, v in {**BASE, **kw}.items() if v is not ...})


def one_line(fn, *args, **kw) -> str:
    with pytest.raises(ValueError) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg and msg.strip(), msg
    return msg


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:       # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# --- config files: (file content, what the message must say) ---------------------------------------

CONFIGS = {
    "json_list": ("[1, 2]", ["holds a list, not a JSON object", "hidden_size"]),
    "json_string": ('"llama"', ["holds a string, not a JSON object"]),
    "json_null": ("null", ["holds null, not a JSON object"]),
    "not_json": ("hello", ["not valid JSON (line 1, column 1", "fix the file"]),
    "empty": ("", ["the file is empty", "one JSON object"]),
    "blank": ("  \n", ["the file is empty"]),
    "text_config_str": (cfg(text_config="x"), ["text_config is a string, not an object", "multimodal"]),
    "text_config_list": (cfg(text_config=[1]), ["text_config is a list, not an object"]),
    "text_config_number": (cfg(text_config=3), ["text_config is a number, not an object"]),
    "missing_all": ("{}", ["lacks a field the estimator needs: hidden_size", "num_hidden_layers"]),
    "missing_vocab": (cfg(vocab_size=...), ["lacks a field the estimator needs: vocab_size"]),
    "missing_layers": (cfg(num_hidden_layers=...), ["num_hidden_layers (or n_layer)"]),
    "heads_not_dividing": (cfg(hidden_size=100, num_attention_heads=3, num_key_value_heads=3),
                           ["num_attention_heads (3) does not divide hidden_size (100)", "set head_dim"]),
    "hidden_fraction": (cfg(hidden_size=576.5), ["hidden_size must be a whole number", "got 576.5"]),
    "hidden_float_whole": (cfg(hidden_size=576.0), ["hidden_size must be a whole number", "(576, not 576.0)"]),
    "hidden_negative": (cfg(hidden_size=-576), ["hidden_size must be a whole number", "at least 1"]),
    "hidden_zero": (cfg(hidden_size=0), ["hidden_size must be a whole number", "got 0"]),
    "hidden_bool": (cfg(hidden_size=True), ["hidden_size", "the boolean True"]),
    "hidden_string": (cfg(hidden_size="576"), ["hidden_size", "without quotes"]),
    "hidden_nan": ('{"hidden_size": NaN, "num_attention_heads": 9}', ["hidden_size", "got nan"]),
    "hidden_inf": ('{"hidden_size": Infinity, "num_attention_heads": 9}', ["hidden_size", "got inf"]),
    "hidden_absurd": (cfg(hidden_size=10**200, num_attention_heads=1, num_key_value_heads=1),
                      ["hidden_size", "beyond any real model", "typo"]),
    "layers_fraction": (cfg(num_hidden_layers=30.5), ["num_hidden_layers must be a whole number", "30.5"]),
    "layers_zero": (cfg(num_hidden_layers=0), ["num_hidden_layers", "got 0"]),
    "layers_negative": (cfg(num_hidden_layers=-1), ["num_hidden_layers", "at least 1"]),
    "layers_bool": (cfg(num_hidden_layers=True), ["num_hidden_layers", "boolean"]),
    "layers_string": (cfg(num_hidden_layers="30"), ["num_hidden_layers", "without quotes"]),
    "layers_absurd": (cfg(num_hidden_layers=10**9), ["num_hidden_layers", "beyond any real model"]),
    "vocab_float": (cfg(vocab_size=1e30), ["vocab_size must be a whole number"]),
    "kv_not_dividing": (cfg(num_key_value_heads=4), ["num_attention_heads (9) must be a multiple of "
                                                     "num_key_value_heads (4)"]),
    "kv_zero": (cfg(num_key_value_heads=0), ["num_key_value_heads", "got 0"]),
    "kv_above_heads": (cfg(num_key_value_heads=18), ["must be a multiple of num_key_value_heads (18)"]),
    "intermediate_negative": (cfg(intermediate_size=-1), ["intermediate_size", "at least 1"]),
    "head_dim_fraction": (cfg(head_dim=64.5), ["head_dim must be a whole number"]),
    "head_dim_negative": (cfg(head_dim=-64), ["head_dim", "at least 1"]),
    "model_type_number": (cfg(model_type=5), ["model_type must be a string"]),
    "tie_string": (cfg(tie_word_embeddings="false"), ["tie_word_embeddings must be true or false"]),
    "hidden_act_list": (cfg(hidden_act=["silu"]), ["hidden_act must be a string"]),
    "non_utf8": (b'{"hidden_size": "\xff"}', ["is not UTF-8", "save the file as UTF-8"]),
}


def write(tmp_path, name, content):
    p = tmp_path / f"{name}.json"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return p


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_config_is_one_line_naming_the_file_and_field(tmp_path, name, capsys):
    content, needles = CONFIGS[name]
    p = write(tmp_path, name, content)
    msg = one_line(vram.from_config, p)
    assert str(p) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert one_line(vram.estimate, str(p)) == msg
    for flag in ("--model", "--config"):
        code, out, err = run_cli(capsys, "estimate", flag, str(p))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert needles[0] in err and "Traceback" not in err


def test_folder_without_config_json(tmp_path):
    msg = one_line(vram.from_config, tmp_path)
    assert f"cannot read config {tmp_path / 'config.json'}: no such file" in msg and "preset" in msg


def test_empty_config_path_and_model_name(capsys):
    assert "config path is empty" in one_line(vram.from_config, "")
    for bad in ("", "   ", None):
        assert "no model given" in one_line(vram.resolve, bad)
    code, _, err = run_cli(capsys, "estimate")
    assert code == 2 and "give --model NAME" in err and "--config PATH" in err


def test_hub_id_says_the_estimator_never_downloads():
    msg = one_line(vram.estimate, "meta-llama/Llama-2-7b-hf")
    assert "never downloads" in msg and "did you mean llama-2-7b" in msg and "config.json" in msg


def test_a_json_list_config_in_a_real_process_is_one_line(tmp_path):
    p = write(tmp_path, "list", "[1, 2]")
    r = subprocess.run([sys.executable, "-m", "peftlab.cli", "estimate", "--config", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "holds a list" in r.stderr
    assert "Traceback" not in r.stderr


# --- valid neighbours -------------------------------------------------------------------------

def test_valid_neighbours_still_estimate(tmp_path):
    base = vram.from_config(write(tmp_path, "base", cfg()))
    multimodal = write(tmp_path, "mm", json.dumps({"model_type": "llava", "text_config": BASE}))
    assert vram.from_config(multimodal).linears() == base.linears()
    nulls = write(tmp_path, "nulls", cfg(num_key_value_heads=None, head_dim=None, text_config=None))
    assert vram.from_config(nulls).kv_heads == 9                       # null = not given
    gemma_like = write(tmp_path, "gemma", cfg(hidden_size=3072, num_attention_heads=16,
                                              num_key_value_heads=16, head_dim=256))
    assert vram.from_config(gemma_like).hd == 256                      # head_dim given: no division rule
    cli_total = vram.estimate(str(tmp_path / "base.json")).total
    assert cli_total == vram.estimate(base).total


def test_config_flag_equals_model_path(capsys, tmp_path):
    p = write(tmp_path, "base", cfg())
    a = json.loads(run_cli(capsys, "estimate", "--config", str(p), "--json")[1])
    b = json.loads(run_cli(capsys, "estimate", "--model", str(p), "--json")[1])
    assert a == b and a["total_bytes"] > 0


# --- settings through the API: (keywords, what the message must say) ---------------------------------

SETTINGS = {
    "method_case": (dict(method="QLoRA"), ["method must be one of", "did you mean qlora"]),
    "method_none": (dict(method=None), ["method must be one of", "got None"]),
    "rank_zero": (dict(rank=0), ["rank must be a positive integer", "at least 1", "4-64"]),
    "rank_negative": (dict(rank=-4), ["rank must be a positive integer", "got -4"]),
    "rank_fraction": (dict(rank=8.5), ["rank must be a positive integer", "got 8.5"]),
    "rank_float_whole": (dict(rank=8.0), ["rank", "(8, not 8.0)"]),
    "rank_bool": (dict(rank=True), ["rank", "boolean True"]),
    "rank_string": (dict(rank="8"), ["rank", "without quotes"]),
    "rank_above_layer": (dict(rank=200), ["rank 200 is above min(in, out) = 192 of v_proj"]),
    "batch_zero": (dict(batch=0), ["batch must be a positive integer", "got 0"]),
    "batch_fraction": (dict(batch=1.5), ["batch", "got 1.5"]),
    "batch_bool": (dict(batch=True), ["batch", "boolean"]),
    "batch_absurd": (dict(batch=10**9), ["batch", "beyond any real model"]),
    "seq_len_negative": (dict(seq_len=-1), ["seq_len must be a positive integer"]),
    "seq_len_absurd": (dict(seq_len=10**30), ["seq_len", "beyond any real model"]),
    "dtype_torch_name": (dict(dtype="bfloat16"), ["dtype must be one of bf16, fp16, fp32", "did you mean bf16"]),
    "dtype_half": (dict(dtype="half"), ["did you mean fp16"]),
    "dtype_int8": (dict(dtype="int8"), ["dtype must be one of"]),
    "optimizer_adam": (dict(optimizer="adam"), ["optimizer must be one of", "did you mean adamw"]),
    "optimizer_paged": (dict(optimizer="paged_adamw"), ["did you mean paged_adamw"]),
    "targets_empty": (dict(targets=""), ["targets is empty", "q_proj,v_proj"]),
    "targets_none": (dict(targets=None), ["targets must be a comma-separated string or a list", "all-linear"]),
    "targets_number": (dict(targets=[5]), ["targets must be a comma-separated string"]),
    "targets_semicolon": (dict(targets="q_proj;v_proj"), ["unknown target module", "separate names with commas"]),
    "targets_unknown": (dict(targets="q_proj,bogus"), ["unknown target module 'bogus'", "all-linear"]),
    "grad_ckpt_string": (dict(grad_ckpt="false"), ["grad_ckpt must be True or False", "'false'"]),
    "grad_ckpt_int": (dict(grad_ckpt=1), ["grad_ckpt must be True or False"]),
    "double_quant_string": (dict(method="qlora", double_quant="no"), ["double_quant must be True or False"]),
    "dropout_string": (dict(lora_dropout="0.1"), ["lora_dropout must be a number in [0, 1)", "0.05"]),
    "dropout_none": (dict(lora_dropout=None), ["lora_dropout must be a number"]),
    "dropout_nan": (dict(lora_dropout=float("nan")), ["lora_dropout", "got nan"]),
    "dropout_one": (dict(lora_dropout=1.0), ["lora_dropout", "got 1.0"]),
    "attn": (dict(attn="flash"), ["attn must be one of sdpa, eager"]),
    "device": (dict(device="gpu"), ["device must be one of cuda, cpu"]),
    "stack": (dict(stack="x"), ["stack must be one of hf, litgpt"]),
    "unknown_keyword": (dict(ranks=8), ["unknown setting 'ranks'", "did you mean rank"]),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bad_setting_is_one_line_naming_the_field(name):
    kw, needles = SETTINGS[name]
    msg = one_line(vram.estimate, "smollm2-135m", **kw)
    for needle in needles:
        assert needle in msg, msg


def test_settings_object_must_be_settings():
    assert "settings must be a vram.Settings" in one_line(vram.estimate, "smollm2-135m", {"rank": 8})


def test_peft_spellings_and_separators_are_accepted():
    all_linear = vram.estimate("smollm2-135m", targets="all-linear").settings.targets
    assert vram.estimate("smollm2-135m", targets=["all-linear"]).settings.targets == all_linear
    assert len(all_linear) == 7
    assert vram.estimate("smollm2-135m", targets="q_proj v_proj").settings.targets == ("q_proj", "v_proj")
    assert vram.estimate("smollm2-135m", targets="Q_PROJ, v_proj").settings.targets == ("q_proj", "v_proj")
    assert vram.estimate("Llama-2-7B").arch.name == "llama-2-7b"
    assert vram.estimate(" embedded ").arch.name == "smollm2-135m"
    assert vram.estimate("smollm2-135m", method="full", rank=0).total > 0   # rank is ignored for full


@pytest.mark.parametrize("model, needle", [("lama-2-7b", "did you mean llama-2-7b"),
                                           ("llama", "did you mean llama-65b"), (5, "unknown model '5'")])
def test_unknown_model_names(model, needle):
    assert needle in one_line(vram.estimate, model)


def test_bad_arch_object_names_the_field():
    a = vram.PRESETS["smollm2-135m"]
    import dataclasses
    for kw, needle in ((dict(hidden=576.5), "architecture field hidden"), (dict(layers=True), "boolean"),
                       (dict(heads=7, kv_heads=7), "heads (7) does not divide hidden (576)"),
                       (dict(head_dim=-1), "head_dim must be 0")):
        assert needle in one_line(vram.estimate, dataclasses.replace(a, **kw))


# --- the command line: argparse's errors are one line too ------------------------------------------

@pytest.mark.parametrize("argv, needles", [
    (["--rank", "8.5"], ["argument --rank: invalid int value: '8.5'", "--help"]),
    (["--seq-len", "1e3"], ["argument --seq-len: invalid int value"]),
    (["--method", "QLORA"], ["argument --method: invalid choice: 'QLORA'"]),
    (["--optimizer", "adam"], ["argument --optimizer: invalid choice"]),
    (["--dtype", "bfloat16"], ["argument --dtype: invalid choice"]),
    (["--grad-ckpt=yes"], ["argument --grad-ckpt: ignored explicit argument 'yes'"]),
    (["--lora-dropout", "x"], ["argument --lora-dropout: invalid float value"]),
    (["--lora-dropout", "nan"], ["lora_dropout", "got nan"]),
    (["--rank", "0"], ["rank must be a positive integer"]),
    (["--targets", ""], ["targets is empty"]),
    (["--seq-len", str(10**30)], ["seq_len", "beyond any real model"]),
    (["--config", "x.json"], ["not allowed with argument --model"]),
])
def test_cli_bad_input_is_one_line_exit_2(capsys, argv, needles):
    code, out, err = run_cli(capsys, "estimate", "--model", "smollm2-135m", *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "usage:" not in err
    for needle in needles:
        assert needle in err, err


# --- no nan, inf or negative bytes anywhere ---------------------------------------------------------

NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def assert_sane(est) -> None:
    for name, b in {**est.breakdown, "total": est.total, "peak": est.peak_allocated}.items():
        assert isinstance(b, int) and b >= 0, (name, b)
        assert math.isfinite(b / vram.GB), (name, b)
    text = vram.report(est)
    assert not re.search(r"\bnan\b|\binf\b", text, re.I), text
    for line in text.splitlines()[1:-1]:           # the byte columns: no negative number
        assert not re.search(r"(?<![\w.])-\d", line), line
    blob = json.dumps(est.to_json())
    assert "NaN" not in blob and "Infinity" not in blob


def test_edge_value_sweep_never_gives_nan_inf_or_negative_bytes():
    big = vram.Arch("limits", hidden=checks.LIMITS["hidden"], intermediate=checks.LIMITS["intermediate"],
                    layers=checks.LIMITS["layers"], heads=checks.LIMITS["heads"],
                    kv_heads=checks.LIMITS["kv_heads"], vocab=checks.LIMITS["vocab"])
    tiny = vram.Arch("tiny", hidden=1, intermediate=1, layers=1, heads=1, kv_heads=1, vocab=1)
    grid = itertools.product([tiny, "smollm2-135m", "phi-1.5", big], vram.METHODS, [1, 2**20], [1, 2**16],
                             [False, True], ["sdpa", "eager"])
    n = 0
    for model, method, seq_len, batch, ckpt, attn in grid:
        for optimizer, dtype, stack in (("adamw", "fp32", "hf"), ("paged_adamw_8bit", "fp16", "hf"),
                                        ("sgd", "bf16", "litgpt")):
            if stack == "litgpt" and "dora" in method:
                continue
            est = vram.estimate(model, method=method, rank=1, targets="all-linear", seq_len=seq_len,
                                batch=batch, grad_ckpt=ckpt, attn=attn, optimizer=optimizer, dtype=dtype,
                                stack=stack, lora_dropout=0.1 if n % 2 else 0.0)
            assert_sane(est)
            n += 1
    assert n > 300
