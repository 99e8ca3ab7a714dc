"""benchmarks/bench_notebooks.py --as-avx2: the AVX2-only emulation really hides AVX-512 from
everything that would use it (the flags the kit reads, torch's kernels, bitsandbytes' CPU library),
so the profile picks fp32 as on an AVX2-only laptop. Only meaningful on an AVX-512 machine, as root
with util-linux `unshare`; skipped elsewhere with the reason."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_notebooks.py"


def _probe(*flags: str) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), "--probe", *flags], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    if out.returncode != 0 and any(why in out.stderr for why in ("--as-avx2 needs", "cannot bind-mount", "unshare:")):
        pytest.skip(out.stderr.strip().splitlines()[-1])   # no root, no unshare, or no mount namespace here
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_avx2_emulation_hides_avx512():
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX-512: nothing to hide (it is the AVX2 case already)")
    plain = _probe()
    assert plain["avx512f"] and plain["torch_capability"] == "AVX512"
    emu = _probe("--as-avx2")
    assert emu["avx2"] and not emu["avx512f"] and not emu["avx512_bf16"] and not emu["amx"]
    assert emu["torch_capability"] == "AVX2" and emu["bnb_avx512bf16"] is False
    assert emu["cpu_compute_dtype"] == "fp32" and "hidden" in (emu["avx2_emulation"] or "")
