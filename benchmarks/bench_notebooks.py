"""How long each notebook takes, top to bottom in a fresh kernel, as a learner runs it.

    .venv/bin/python benchmarks/bench_notebooks.py                 # every notebook, cpu profile
    .venv/bin/python benchmarks/bench_notebooks.py 04 06 --top 8   # some notebooks; the 8 slowest cells each
    .venv/bin/python benchmarks/bench_notebooks.py 04 --as-avx2    # on an AVX-512 machine: as if AVX2-only

Each notebook runs in its own new kernel (nbclient, the executor nbval and nbconvert use) with the
chosen profile, exercises unsolved (PEFTLAB_SOLUTIONS=0: the stubs' messages print, the lesson goes
on), and nothing written back to the notebook. Prints one line per notebook and the slowest cells,
names the CPU (model, cores, AVX-512 / AVX512-BF16 / AMX flags) and the load average before and after
(timings from a busy machine are not comparable), and writes everything to
results/notebook_times_<profile>.json. Workshop targets (issue #15): each notebook ≤ 8 min on 2 cores,
00–06 together ≤ 40 min.

--as-avx2 (root, Linux) times an AVX2-only laptop on an AVX-512 machine: it re-runs itself in a private
mount namespace where /proc/cpuinfo has no AVX-512/AMX flags (what peftlab.settings reads to pick
fp32), with torch, oneDNN and MKL held to AVX2 and bitsandbytes' CPU library told the same
(benchmarks/avx2_only/sitecustomize.py). The core stays the newer one, so these times are a lower
bound for an older AVX2-only CPU. Results go to results/notebook_times_<profile>_avx2.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return dict(model=model, cores=os.cpu_count(), avx2="avx2" in flags, avx512f="avx512f" in flags,
                avx512_bf16="avx512_bf16" in flags, amx="amx_bf16" in flags,
                avx2_emulation=os.environ.get("PEFTLAB_AVX2_EMULATION_STATE"))


AVX2_ENV = dict(PEFTLAB_AVX2_EMULATION="1", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                DNNL_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")


def run_as_avx2(argv: list[str]) -> int:
    """Run this script again, AVX-512 hidden from everything that would use it (see the docstring)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not Path("/proc/cpuinfo").is_file():
        raise SystemExit("--as-avx2 needs Linux, root and `unshare` (util-linux): it bind-mounts a /proc/cpuinfo "
                         "without AVX-512 flags in a private mount namespace. Run without it to time this CPU as it is.")
    text = Path("/proc/cpuinfo").read_text()
    if "avx512f" not in text:
        print("this CPU has no AVX-512 already: timing it as it is")
    fake = Path(tempfile.mkdtemp(prefix="peftlab-avx2-")) / "cpuinfo"
    fake.write_text(re.sub(r" (avx512\w*|amx\w*)", "", text))
    shim = str(ROOT / "benchmarks" / "avx2_only")
    env = dict(os.environ, **AVX2_ENV, PYTHONPATH=os.pathsep.join(p for p in (shim, os.environ.get("PYTHONPATH")) if p))
    script = ('mount --bind "$0" /proc/cpuinfo 2>/dev/null || { echo "--as-avx2: cannot bind-mount /proc/cpuinfo in a '
              'private mount namespace here (a container without CAP_SYS_ADMIN?); time this CPU as it is" >&2; exit 3; }; '
              'exec "$@"')
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", script, str(fake), sys.executable, __file__, *argv],
                              env=env).returncode
    finally:
        shutil.rmtree(fake.parent, ignore_errors=True)


def run_notebook(path: Path, profile: str, timeout: int, keep: Path | None = None) -> dict:
    nb = nbformat.read(path, as_version=4)
    cells: list[dict] = []
    started: dict[int, float] = {}

    def start(cell, cell_index, **kw):
        started[cell_index] = time.perf_counter()

    def done(cell, cell_index, **kw):
        first = "".join(cell.source).strip().splitlines()
        head = next((ln for ln in first if not ln.startswith("#")), first[0] if first else "")
        cells.append(dict(index=cell_index, id=cell.get("id"), s=time.perf_counter() - started[cell_index],
                          head=head[:90]))

    env = dict(os.environ, PEFTLAB_PROFILE=profile, PEFTLAB_SOLUTIONS="0", HF_HUB_OFFLINE="1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            on_cell_execute=start, on_cell_executed=done)
    old = dict(os.environ)
    os.environ.update(env)            # the kernel inherits this process's environment
    t0 = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:          # a failing cell: report it, keep the others' times
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"[:300]
    finally:
        os.environ.clear()
        os.environ.update(old)
        if keep is not None:          # the executed notebook, outputs and all, to read what it printed
            keep.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, keep / path.name)
    return dict(notebook=path.name, wall_s=time.perf_counter() - t0, error=error, cells=cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help="notebook numbers (default: all)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--top", type=int, default=5, help="slowest cells to list per notebook")
    ap.add_argument("--timeout", type=int, default=1800, help="per cell, seconds")
    ap.add_argument("--keep", default=None, help="folder to save the executed notebooks in (with outputs)")
    ap.add_argument("--out", default=None, help="results file (default results/notebook_times_<profile>.json)")
    ap.add_argument("--as-avx2", action="store_true", help="time as an AVX2-only CPU (on an AVX-512 machine; root)")
    ap.add_argument("--probe", action="store_true", help="print what this process sees (CPU flags, torch's "
                    "kernels, bitsandbytes' AVX512-BF16 check, the profile's dtype) as JSON and run nothing")
    a = ap.parse_args(argv)
    emulated = os.environ.get("PEFTLAB_AVX2_EMULATION") == "1"
    if a.as_avx2 and not emulated:
        return run_as_avx2(sys.argv[1:] if argv is None else list(argv))
    paths = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.which:
        paths = [p for p in paths if p.name[:2] in a.which]
        if not paths:
            raise SystemExit(f"no notebook matches {a.which}: give two-digit numbers such as 04 06")
    info = cpu_info()
    if a.probe:
        import torch
        from bitsandbytes.functional import has_avx512bf16

        from peftlab import settings
        print(json.dumps(dict(info, torch_capability=torch.backends.cpu.get_cpu_capability(),
                              bnb_avx512bf16=bool(has_avx512bf16()), cpu_compute_dtype=settings.resolve("cpu").compute_dtype)))
        return 0
    print(f"CPU: {info['model']} · {info['cores']} cores · AVX2 {info['avx2']} · AVX-512 {info['avx512f']} · "
          f"AVX512-BF16 {info['avx512_bf16']} · AMX {info['amx']}"
          + (f" · AVX2 EMULATION: {info['avx2_emulation']}, torch {AVX2_ENV['ATEN_CPU_CAPABILITY']}" if emulated else ""))
    load0 = os.getloadavg()[0]
    print(f"profile {a.profile} · load average {load0:.2f} at start (above ~0.5 means something else is running)")
    out = dict(profile=a.profile, cpu=info, load_avg_start=load0, started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               notebooks=[])
    for path in paths:
        r = run_notebook(path, a.profile, a.timeout, Path(a.keep) if a.keep else None)
        out["notebooks"].append(r)
        print(f"{r['notebook']:28s} {r['wall_s'] / 60:5.1f} min{'  FAILED ' + r['error'] if r['error'] else ''}")
        for c in sorted(r["cells"], key=lambda c: -c["s"])[:a.top]:
            print(f"    cell {c['index']:2d} {c['s']:6.1f} s  {c['head']}")
        sys.stdout.flush()
    out["load_avg_end"] = os.getloadavg()[0]
    total = sum(r["wall_s"] for r in out["notebooks"] if r["notebook"][:2] <= "06")
    print(f"00-06 together: {total / 60:.1f} min · load average at the end {out['load_avg_end']:.2f}")
    dest = Path(a.out) if a.out else ROOT / "results" / f"notebook_times_{a.profile}{'_avx2' if emulated else ''}.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest)
    return 1 if any(r["error"] for r in out["notebooks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
