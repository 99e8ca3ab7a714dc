"""The `peftlab` command as a learner runs it: doctor's report and fixes, prepare's idempotence,
and one-line errors with exit code 2 instead of tracebacks."""
import os
import subprocess
import sys

import pytest

from peftlab import cli, doctor


def _run(*args, **env):
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "peftlab.cli", *args], capture_output=True, text=True,
                          env=full, timeout=300)


def test_doctor_reports_every_check(embedded_ready):
    out = _run("doctor", PEFTLAB_PROFILE="smoke")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("torch", "transformers", "peft", "bitsandbytes", "device", "RAM", "disk", "profile", "model"):
        assert f" {name} " in out.stdout
    assert "all good" in out.stdout and "Traceback" not in out.stderr


def test_doctor_gives_the_fix_for_a_bad_profile_and_model(monkeypatch):
    monkeypatch.setenv("PEFTLAB_PROFILE", "fast")
    monkeypatch.setenv("PEFTLAB_MODEL", "nobody/nothing-7b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checks = {c.name: c for c in doctor.run()}
    assert not checks["profile"].ok and "smoke, cpu, gpu" in checks["profile"].fix
    assert not checks["model"].ok and "HF_HUB_OFFLINE" in checks["model"].fix
    text = doctor.report(list(checks.values()))
    assert "2 problem(s)" in text


def test_prepare_is_idempotent(embedded_ready, capsys):
    assert cli.main(["prepare", "--no-install"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_unprepared_cache_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("PEFTLAB_PROFILE", "smoke")
    checks = {c.name: c for c in doctor.run()}
    assert not checks["model"].ok and "peftlab prepare" in checks["model"].fix


def test_unknown_subcommand_exits_2():
    out = _run("train-everything")
    assert out.returncode == 2 and "invalid choice" in out.stderr


@pytest.mark.parametrize("env, message", [({"PEFTLAB_PROFILE": "turbo"}, "unknown profile 'turbo'")])
def test_errors_are_one_line(env, message):
    out = _run("doctor", **env)
    assert out.returncode == 1 and message in out.stdout and "Traceback" not in out.stderr
