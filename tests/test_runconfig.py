"""`peftlab train --config FILE` before any training: the TOML file against `recipe.TrainConfig`.

Compared: what `runconfig.load` builds from a file against the profile's recipe with the same
overrides, and each kind of bad file (unknown key, wrong type, bad TOML, missing file, a value
TrainConfig refuses) against a one-line `peftlab: error:` with exit code 2 and no traceback.
"""
import pathlib

import pytest

from peftlab import cli, recipe, runconfig, settings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write(tmp_path, text: str) -> pathlib.Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_examples_load_and_map_onto_the_recipe():
    rc = runconfig.load(ROOT / "examples" / "smoke.toml")
    want = recipe.recipe(settings.resolve("smoke"), method="qlora", model="embedded", device="cpu",
                         compute_dtype="fp32", task="orders", target_modules=recipe.ALL_LINEAR, r=8,
                         alpha=16, max_steps=2, batch_size=2, grad_accum=1, lr=1e-3, train_examples=16,
                         max_length=128, save_steps=1)
    assert rc.train == want and rc.output_dir == pathlib.Path("runs/smoke") and not rc.resume
    for path in sorted((ROOT / "examples").glob("*.toml")):
        assert isinstance(runconfig.load(path).train, recipe.TrainConfig), path


def test_short_names_and_target_lists(tmp_path):
    rc = runconfig.load(_write(tmp_path, 'profile = "cpu"\nsteps = 7\nbatch = 3\nrank = 4\n'
                                         'targets = ["q_proj", "v_proj"]\ndropout = 0\nlr = 5e-4\nresume = true\n'))
    cfg = rc.train
    assert (cfg.max_steps, cfg.batch_size, cfg.r, cfg.target_modules, cfg.lr) == (7, 3, 4, ("q_proj", "v_proj"), 5e-4)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float) and rc.resume   # a TOML integer where a float is wanted
    assert runconfig.load(_write(tmp_path, 'targets = "q_proj, v_proj"\n')).train.target_modules == ("q_proj", "v_proj")
    assert runconfig.load(_write(tmp_path, 'targets = "attention"\n')).train.target_modules == recipe.ATTENTION


@pytest.mark.parametrize("text, words", [
    ('stesp = 3\n', ["unknown key 'stesp'", "did you mean 'steps'"]),
    ('learning_rate = 1e-3\n', ["unknown key 'learning_rate'"]),
    ('steps = "3"\n', ["steps = '3'", "wrong type", "whole number"]),
    ('steps = 2.5\n', ["wrong type"]),
    ('lr = "fast"\n', ["lr", "a number"]),
    ('gradient_checkpointing = 1\n', ["true or false"]),
    ('targets = [1, 2]\n', ["list of strings"]),
    ('steps = 0\n', ["max_steps must be"]),                # TrainConfig's own check, file named
    ('method = "lorra"\n', ["method must be one of"]),
    ('steps = 3\nmax_steps = 4\n', ["given twice"]),
    ('steps = \n', ["not valid TOML"]),
    ('[train]\nsteps = 3\n', ["tables are not used"]),
    ('train_file = "nowhere.jsonl"\n', ["nowhere.jsonl does not exist"]),
    ('profile = "fast"\n', ["unknown profile 'fast'"]),
])
def test_bad_config_is_one_line(tmp_path, capsys, text, words):
    path = _write(tmp_path, text)
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("peftlab: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err or "profile" in err
    for w in words:
        assert w in err, (w, err)


def test_missing_or_folder_config_is_one_line(tmp_path, capsys):
    for bad in (tmp_path / "nope.toml", tmp_path):
        assert runconfig.main(["--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "give a TOML file" in err, err
