"""Colab start: every notebook's badge and bootstrap cell agree with the one repository URL, and the
bootstrap cell, run as Colab would run it, installs a working kit without touching the torch build
that was there before.

The simulated start: a fresh virtual environment with torch installed first (standing in for Colab's
CUDA build), a local clone of this repository standing in for the URL, a fake `google.colab` module,
and the notebooks' own bootstrap cell executed in that interpreter. Then `import peftlab` must come
from site-packages (not editable), the data must load, and torch's files must be unchanged.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _colab_script():
    spec = importlib.util.spec_from_file_location("colab_script", ROOT / "scripts" / "colab.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_url_lives_in_pyproject_and_every_notebook_agrees():
    colab = _colab_script()
    url = colab.repo_url()
    bad = [p for nb in NOTEBOOKS for p in colab.problems(nb, url)]
    assert not bad, "\n".join(bad) + "\nrun `python scripts/colab.py` to restamp"
    # the checker can fail: a notebook stamped for another URL disagrees
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace(url, url + "-fork")
    tmp = ROOT / "artifacts" / "colab_check" / NOTEBOOKS[0].name
    tmp.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, tmp)
    assert any("bootstrap cell differs" in p for p in colab.problems(tmp, url))


def test_embedded_pin_is_the_models_pin():
    from peftlab import models

    assert _colab_script().EMBEDDED_PACKAGE == models.EMBEDDED_PACKAGE


def test_bootstrap_is_inert_outside_colab():
    colab = _colab_script()
    src = colab.bootstrap_source(colab.repo_url())
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "" and "peftlab" not in out.stderr


def test_simulated_colab_start(tmp_path, embedded_ready):
    colab = _colab_script()
    url = colab.repo_url()
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    venv = tmp_path / "colab-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
    # "Colab's" torch: installed before the kit; its RECORD file lists every file and hash it installed.
    torch_pin = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__.split('+')[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(pip + [f"torch=={torch_pin}"], check=True, timeout=600)
    record = lambda: subprocess.run(  # noqa: E731  (a reinstall, even of the same version, writes new files)
        [str(py), "-c", "import importlib.metadata as m, os, torch; d = m.distribution('torch'); "
                        "r = os.stat(d._path / 'RECORD'); i = os.stat(torch.__file__); "
                        "print(d.version, r.st_ino, r.st_mtime_ns, i.st_ino, i.st_mtime_ns)"],
        capture_output=True, text=True, check=True).stdout
    before = record()

    cell = colab.bootstrap_source(url)
    home = tmp_path / "content" / "peftlab"
    assert f'"{url}"' in cell and '"/content/peftlab"' in cell  # what we substitute is really there
    cell = cell.replace(f'"{url}"', json.dumps(str(clone))).replace('"/content/peftlab"', json.dumps(str(home)))
    probe = textwrap.dedent("""
        import sys, types
        sys.modules["google.colab"] = types.ModuleType("google.colab")
        exec(compile(open(sys.argv[1]).read(), "bootstrap-cell", "exec"))
        import peftlab, torch
        from peftlab import data
        ds = data.load_split("orders", "train")
        print("PEFTLAB", peftlab.__file__)
        print("ROWS", len(ds))
        print("TORCH", torch.__version__)
    """)
    (tmp_path / "cell.py").write_text(cell)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PEFTLAB_DATA"))}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([str(py), "-c", probe, str(tmp_path / "cell.py")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ")[0] in
                 ("PEFTLAB", "ROWS", "TORCH"))
    assert lines["PEFTLAB"].startswith(str(venv)), "the kit must be a plain install in site-packages"
    assert int(lines["ROWS"]) > 0
    assert lines["TORCH"].split("+")[0] == torch_pin
    assert record() == before, "the bootstrap changed the torch that was installed before it"
