"""Run All twice in ONE kernel: what a learner does after changing a setting and pressing Run All again.

    PEFTLAB_PROFILE=smoke .venv/bin/python scripts/run_twice.py notebooks/04_qlora_training.ipynb [...]

Each notebook is executed top to bottom, then every code cell again in the same kernel (state from
the first pass still there: existing output folders, loaded models, widgets). A failure names the
notebook, the pass, the cell number and the error. Exit code 1 if any notebook fails.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def run_twice(path: Path, timeout: int = 1800) -> str | None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        for rnd in (1, 2):
            t0 = time.perf_counter()
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    client.execute_cell(cell, i)
                except CellExecutionError as e:
                    return f"pass {rnd}, cell {i}: {str(e).strip().splitlines()[-1]}"
            print(f"  {path.name}: pass {rnd} ok ({time.perf_counter() - t0:.0f} s)", flush=True)
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    failed = 0
    for p in map(Path, argv):
        err = run_twice(p)
        if err:
            failed += 1
            print(f"FAIL {p.name}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
