"""The scale-out path run for real: `torchrun --nproc_per_node 2 -m peftlab.train --config FILE`
on 2 CPU processes (gloo), as a user runs it from a fresh clone.

Compared: the run's output against "world size 2" (torchrun really started two ranks; `accelerate
launch --cpu --num_processes 2` would silently start one), and the adapter rank 0 wrote against
what PEFT loads onto the base model (same adapter weights, both ranks trained the same copy).
Tiny on purpose (2 steps, 1 sequence per rank, 4 records): it checks the wiring, not learning.
"""
import os
import re

import pytest

from peftlab import runconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config(tmp_path):
    text = open(os.path.join(ROOT, "examples", "smoke.toml")).read()
    text = re.sub(r"(?m)^(output_dir|save_steps|batch|train_examples|max_length) = .*$", "", text)
    text += (f'output_dir = "{tmp_path / "run"}"\nsave_steps = 0\nbatch = 1\ntrain_examples = 4\n'
             'max_length = 96\n')
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def test_two_cpu_processes_train_and_save_a_loadable_adapter(embedded_ready, tiny_config, tmp_path):
    out = runconfig.torchrun(2, "peftlab.train", "--config", tiny_config, timeout=600, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "world size 2 (MULTI_CPU, backend gloo)" in log, log[-3000:]
    assert log.count("world size") == 1 and log.count("saved to") == 1, "rank 0 alone prints and saves"
    assert "done: step 2" in log

    from peft import PeftModel
    from safetensors.torch import load_file

    from peftlab import models

    adapter = tmp_path / "run" / "adapter"
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    model = PeftModel.from_pretrained(models.load_model("embedded", device="cpu"), str(adapter))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    b = next(v for k, v in saved.items() if "lora_B" in k)
    assert b.abs().max() > 0, "lora_B starts at zero: a trained adapter has moved it"


def test_torchrun_helper_refuses_a_bad_count():
    with pytest.raises(ValueError, match="nproc must be"):
        runconfig.torchrun(0, "peftlab.train")
