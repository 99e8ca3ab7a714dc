"""`peftlab estimate` through peftlab.cli.main: the human table (GB and GiB, breakdown), the JSON
object (total_bytes equals the sum of the breakdown and equals vram.estimate), config.json paths,
lm_head targets, and bad input as one line on stderr with exit code 2 and no traceback."""
import json

import pytest

from peftlab import cli, vram

BASE = ["estimate", "--model", "llama-2-7b", "--method", "qlora", "--rank", "8",
        "--targets", "q_proj,v_proj", "--seq-len", "1304", "--batch", "1"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_human_output_has_total_in_gb_and_gib_and_the_breakdown(capsys):
    code, out, _ = run(capsys, *BASE)
    assert code == 0
    total = vram.estimate("llama-2-7b", method="qlora", seq_len=1304).total
    assert f"{total / 1e9:.2f} GB" in out and f"{total / 2**30:.2f} GiB" in out
    for term in ("weights", "activations", "optimizer", "cuda_context"):
        assert term in out


def test_json_is_one_object_whose_breakdown_sums_to_the_total(capsys):
    code, out, _ = run(capsys, *BASE, "--grad-ckpt", "--optimizer", "paged_adamw_32bit",
                       "--double-quant", "--dtype", "bf16", "--json")
    assert code == 0
    obj = json.loads(out)
    assert set(obj) >= {"total_bytes", "breakdown", "settings"}
    assert isinstance(obj["total_bytes"], int)
    assert obj["total_bytes"] == sum(obj["breakdown"].values())
    assert obj["settings"]["grad_ckpt"] is True and obj["settings"]["optimizer"] == "paged_adamw_32bit"
    s = vram.Settings(method="qlora", seq_len=1304, grad_ckpt=True, optimizer="paged_adamw_32bit")
    assert obj["total_bytes"] == vram.estimate("llama-2-7b", s).total


def test_rank_and_targets_are_ignored_for_full(capsys):
    full = ["estimate", "--model", "mistral-7b", "--method", "full", "--json"]
    a = json.loads(run(capsys, *full, "--rank", "4")[1])
    b = json.loads(run(capsys, *full, "--rank", "64", "--targets", "o_proj")[1])
    assert a["total_bytes"] == b["total_bytes"]


def test_config_path_and_lm_head_target(capsys, embedded_ready):
    code, out, _ = run(capsys, "estimate", "--model", str(embedded_ready / "config.json"),
                       "--targets", "q_proj,lm_head", "--json")
    assert code == 0
    with_head = json.loads(out)["breakdown"]["trainable params"]
    code, out, _ = run(capsys, "estimate", "--model", str(embedded_ready / "config.json"),
                       "--targets", "q_proj", "--json")
    assert with_head - json.loads(out)["breakdown"]["trainable params"] == 8 * (576 + 49152) * 4


@pytest.mark.parametrize("argv, needle", [
    (["--model", "lama-2-7b"], "did you mean llama-2-7b"),
    (["--model", "llama-2-7b", "--seq-len", "-5"], "seq_len"),
    (["--model", "llama-2-7b", "--batch", "0"], "batch"),
    (["--model", "llama-2-7b", "--rank", "5000"], "rank 5000"),
    (["--model", "/nonexistent/config.json"], "cannot read config"),
    (["--model", "llama-2-7b", "--targets", "q_proj,bogus"], "unknown target"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, "estimate", *argv)
    assert code == 2 and out == ""
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_fit_line_lists_the_gpus_the_estimate_fits(capsys):
    code, out, _ = run(capsys, *BASE)
    fits = [g for g, ok, _ in vram.estimate("llama-2-7b", method="qlora", seq_len=1304).gpu_fits() if ok]
    assert code == 0 and fits and out.strip().splitlines()[-1].endswith(", ".join(fits))
