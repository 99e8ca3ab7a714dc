"""peftlab.recipe: the recipe's configs vs the seed's advice (C16); a config is self-contained —
model, device and compute dtype come from the profile passed in, never from the session's
profile (compared: a profile with fp16 vs a session patched to another dtype); bad fields give
one-line ValueErrors that say what to do."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from peftlab import recipe, settings


def test_seed_defaults_are_the_seed_recipe():
    c = recipe.seed_defaults()
    assert (c.r, c.alpha, c.dropout, c.lr, c.batch_size, c.grad_accum) == (16, 32, 0.05, 2e-4, 4, 4)
    assert c.target_modules == recipe.ATTENTION and c.gradient_checkpointing
    assert recipe.seed_defaults(r=8).r == 8


@pytest.mark.parametrize("kw, msg", [(dict(method="ia3"), "method must be one of"),
                                     (dict(task="nope"), "task must be one of"),
                                     (dict(r=0), "r must be"), (dict(compute_dtype="int8"), "compute_dtype"),
                                     (dict(compute_dtype="auto"), "recipe\\(profile\\) picks"),
                                     (dict(device="tpu"), "device must be one of cpu, cuda"),
                                     (dict(model=" "), "model is empty"),
                                     (dict(target_modules=()), "target_modules is empty")])
def test_config_validation_says_what_to_do(kw, msg):
    with pytest.raises(ValueError, match=msg) as err:
        recipe.TrainConfig(**kw)
    assert "\n" not in str(err.value)


def test_a_bare_config_is_concrete():
    c = recipe.TrainConfig()
    assert (c.model, c.device, c.compute_dtype, c.dtype) == ("embedded", "cpu", "fp32", torch.float32)


@pytest.mark.parametrize("make", [recipe.recipe, recipe.seed_defaults])
def test_the_profile_passed_in_decides_hardware_not_the_session(make, monkeypatch):
    session = replace(settings.resolve("cpu"), compute_dtype="bf16", model="session/model")
    monkeypatch.setattr(settings, "profile", lambda: session)
    other = replace(settings.resolve("gpu"), device="cpu", compute_dtype="fp16", model="other/model")
    c = make(other)
    assert (c.compute_dtype, c.dtype, c.model, c.device) == ("fp16", torch.float16, "other/model", "cpu")
    d = make()                                   # the entry-point default: the session's profile
    assert (d.compute_dtype, d.model) == ("bf16", "session/model")
    assert make(other, compute_dtype="fp32").dtype == torch.float32  # overrides win


def test_recipe_per_profile():
    smoke, cpu = recipe.recipe(settings.resolve("smoke")), recipe.recipe(settings.resolve("cpu"))
    assert smoke.max_steps < cpu.max_steps and cpu.target_modules == recipe.ALL_LINEAR
    assert cpu.compute_dtype in settings.DTYPES and cpu.compute_dtype == settings.resolve("cpu").compute_dtype


def test_config_dict_is_flat():
    d = recipe.config_dict(recipe.TrainConfig(target_modules=("q_proj", "v_proj")))
    assert d["target_modules"] == "q_proj,v_proj" and d["device"] == "cpu"
