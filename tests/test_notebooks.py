"""Notebooks as files: outputs stripped in git, the house layout (what/how long/hardware up top,
"where it lives" at the end, imports in the first code cell), and no hub downloads or `!pip`
outside a guarded Colab cell. nbval executes them separately (`--nbval-lax notebooks`)."""
import json
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _tracked(path: pathlib.Path) -> bool:
    out = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT,
                         capture_output=True)
    return out.returncode == 0


def test_there_are_notebooks():
    assert any(nb.name.startswith("00_") for nb in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_stripped(path):
    if not _tracked(path):
        pytest.skip("not in git yet")
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{path.name}: stored outputs in cells {dirty}; run `jupyter nbconvert --clear-output --inplace {path}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_house_layout(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    intro = "".join(cells[0]["source"]).lower()
    assert cells[0]["cell_type"] == "markdown"
    assert "min" in intro and ("cpu" in intro or "gpu" in intro), "say how long it runs and on what"
    outro = "".join(cells[-1]["source"]).lower()
    assert cells[-1]["cell_type"] == "markdown" and "peftlab" in outro, "end with where the code lives"
    # the Colab bootstrap cell (tagged, stamped by scripts/colab.py, inert off Colab) is not lesson code
    code = [("".join(c["source"])) for c in cells if c["cell_type"] == "code"
            and "colab-bootstrap" not in c.get("metadata", {}).get("tags", [])]
    for i, src in enumerate(code):
        assert not re.search(r"^\s*from\s+\S+\s+import\s+\*", src, re.M), "no star imports"
        if i > 0:
            assert not re.search(r"^(from peftlab|import peftlab)", src, re.M), \
                f"imports belong in the first code cell (code cell {i})"
        if re.search(r"^\s*[!%]pip", src, re.M):
            assert "google.colab" in src, "`!pip` only inside a guarded Colab cell"
        assert "hf_hub_download" not in src and "snapshot_download" not in src


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_valid_nbformat(path):
    """Valid nbformat 4.5 (every cell has an id): a hand-inserted cell without one is an error in future nbformat."""
    import nbformat

    raw = json.loads(path.read_text())  # nbformat.read would quietly add missing ids
    missing = [i for i, c in enumerate(raw["cells"]) if "id" not in c]
    assert not missing, f"{path.name}: cells {missing} have no id; run nbformat's normalize() on it"
    nbformat.validate(nbformat.read(path, as_version=4))  # raises ValidationError naming the problem
