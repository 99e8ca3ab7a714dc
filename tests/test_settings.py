"""Profiles: the environment switch, the default by hardware, and the error for a bad name."""
import dataclasses

import pytest
import torch

from peftlab import settings


def test_each_profile_resolves():
    for name in settings.PROFILES:
        prof = settings.resolve(name)
        assert prof.name == name
        assert prof.device == ("cuda" if torch.cuda.is_available() and name == "gpu" else "cpu")
        assert prof.paged_optim == (prof.device == "cuda")
        assert prof.compute_dtype in ("bf16", "fp16", "fp32")


def test_env_is_read(monkeypatch):
    monkeypatch.setenv("PEFTLAB_PROFILE", " CPU ")
    assert settings.resolve().name == "cpu"
    monkeypatch.delenv("PEFTLAB_PROFILE")
    assert settings.resolve().name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_profile_lists_valid_ones(monkeypatch):
    monkeypatch.setenv("PEFTLAB_PROFILE", "turbo")
    with pytest.raises(ValueError, match="unknown profile 'turbo'.*smoke, cpu, gpu"):
        settings.resolve()


def test_profile_is_frozen_and_picks():
    prof = settings.resolve("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.name = "cpu"
    assert prof.pick(smoke=1, cpu=2, gpu=3) == 1
    assert settings.resolve("gpu").pick(smoke=1, cpu=2, gpu=3) == 3


def test_model_override(monkeypatch):
    monkeypatch.setenv("PEFTLAB_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")
    assert settings.resolve("cpu").model == "Qwen/Qwen2.5-0.5B-Instruct"
    monkeypatch.delenv("PEFTLAB_MODEL")
    assert settings.resolve("cpu").model == "embedded"


def test_seed_everything_repeats():
    settings.seed_everything(7)
    a = torch.randn(3)
    settings.seed_everything(7)
    assert torch.equal(a, torch.randn(3))


@pytest.mark.parametrize("capability, dtype", [((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp16"),
                                               ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_gpu_precision_follows_compute_capability(capability, dtype):
    """A T4 (7.5) must get fp16: torch.cuda.is_bf16_supported() says True there (emulated bf16)."""
    assert settings.cuda_compute_dtype(capability) == dtype
    from peftlab import doctor

    assert doctor.precision_line(capability).startswith(dtype)
