"""`python -m peftlab.cli` on a bad cache and with each downloads setting, as a learner runs it
(issue 19, classes 5 and 6): exit code 2 (1 for doctor's findings), one line, no traceback,
and the hint that works in the CLI (the command no longer re-sets HF_HUB_OFFLINE=1 over the
user's choice; PEFTLAB_ALLOW_DOWNLOADS=1 is the switch it names).

Compared: stderr / stdout of a subprocess against the message content (what is wrong, what to
set); the no-network case uses HF_ENDPOINT on a closed local port, so it is the same with or
without internet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

HUB = "HuggingFaceTB/SmolLM2-360M-Instruct"


def _run(*args, drop=(), **env):
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "peftlab.cli", *args], capture_output=True, text=True,
                          env=full, timeout=600)


def _error_line(out) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("peftlab: error: "), out.stderr
    return lines[0]


def test_prepare_under_a_file_names_peftlab_cache(tmp_path):
    (tmp_path / "f").write_text("mine")
    line = _error_line(_run("prepare", "--no-install", PEFTLAB_CACHE=str(tmp_path / "f" / "cache")))
    assert "is a file" in line and "PEFTLAB_CACHE=" in line
    assert (tmp_path / "f").read_text() == "mine"


def test_prepare_on_a_truncated_cache_says_damaged(tmp_path):
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    save_file({"w": torch.zeros(1024)}, str(target / "model.safetensors"))
    (target / "PREPARED.json").write_text(json.dumps({"source": "test"}))
    f = target / "model.safetensors"
    f.write_bytes(f.read_bytes()[:2000])
    line = _error_line(_run("prepare", "--no-install", PEFTLAB_CACHE=str(tmp_path)))
    assert "is damaged" in line and "cut short" in line and "`peftlab prepare --force`" in line


def test_a_switch_typo_is_one_line():
    line = _error_line(_run("prepare", "--no-install", PEFTLAB_ALLOW_DOWNLOADS="maybe"))
    assert "PEFTLAB_ALLOW_DOWNLOADS='maybe' is not a switch: use 1 or 0" in line


@pytest.mark.parametrize("env, drop, hub_line, fix", [
    # HF_HUB_OFFLINE unset by the user: downloads stay off, and the fix names the switch that works here
    ({}, ("HF_HUB_OFFLINE", "PEFTLAB_ALLOW_DOWNLOADS"), "downloads off (neither PEFTLAB_ALLOW_DOWNLOADS nor",
     "downloads are off; set PEFTLAB_ALLOW_DOWNLOADS=1"),
    # downloads allowed but the hub cannot be reached: said at once, with the network hint
    ({"PEFTLAB_ALLOW_DOWNLOADS": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}, (),
     "downloads allowed (PEFTLAB_ALLOW_DOWNLOADS=1)", "cannot reach 127.0.0.1"),
])
def test_doctor_with_a_hub_model_gives_the_fix_that_works(env, drop, hub_line, fix):
    out = _run("doctor", drop=drop, PEFTLAB_MODEL=HUB, **env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert hub_line in out.stdout and fix in out.stdout, out.stdout
    assert "unset HF_HUB_OFFLINE" not in out.stdout and "prepare --force" not in out.stdout
