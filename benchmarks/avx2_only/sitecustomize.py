"""AVX2-only emulation for timing runs on an AVX-512 machine (benchmarks/bench_notebooks.py --as-avx2).

Python imports `sitecustomize` at start-up from any folder on PYTHONPATH, so every process of an
emulated run (the benchmark and each notebook kernel) comes through here. When
PEFTLAB_AVX2_EMULATION=1 it hides AVX-512 from bitsandbytes' CPU library before anything calls it.

Why this is needed: the library picks its 4-bit dequantization kernel at run time from libgcc's CPU
feature words (`__cpu_model`, `__cpu_features2`, linked into the library and filled by a
constructor when it is loaded). Clearing the AVX-512 bits there, before the first call, sends it down
the path an AVX2-only laptop takes. The rest of the emulation is set by the benchmark: torch's own
kernels (ATEN_CPU_CAPABILITY=avx2), oneDNN and MKL (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) and a
/proc/cpuinfo without AVX-512/AMX flags (bind-mounted in a private mount namespace), which is what
peftlab.settings reads to choose fp32 or bf16.

What it cannot emulate is the core itself: a newer core running AVX2 code is still faster than an
older AVX2-only one, so emulated times are a lower bound for a slow laptop.
"""
import os

if os.environ.get("PEFTLAB_AVX2_EMULATION") == "1":
    import ctypes
    import importlib.util
    import subprocess
    from pathlib import Path

    # libgcc's enum processor_features: bit i of word i//32. AVX512F 15, AVX512VL..AVX512VBMI2 20-31
    # (word 0); AVX512VNNI 34, AVX512BITALG 35, AVX512BF16 36 (word 1, in __cpu_features2).
    _WORD0_CLEAR = (1 << 15) | sum(1 << b for b in range(20, 32))
    _WORD1_CLEAR = (1 << 2) | (1 << 3) | (1 << 4)

    def _hide_avx512() -> str:
        spec = importlib.util.find_spec("bitsandbytes")
        if spec is None or not spec.submodule_search_locations:
            return "bitsandbytes not installed"
        lib = Path(list(spec.submodule_search_locations)[0]) / "libbitsandbytes_cpu.so"
        ctypes.CDLL(str(lib))     # dlopen now; bitsandbytes' own load later gets this same handle
        syms = {}
        for line in subprocess.run(["nm", str(lib)], capture_output=True, text=True, check=True).stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2] in ("__cpu_model", "__cpu_features2"):
                syms[parts[2]] = int(parts[0], 16)
        base = next(int(line.split("-")[0], 16) for line in Path("/proc/self/maps").read_text().splitlines()
                    if line.endswith(str(lib.resolve())) and line.split()[2] == "00000000")
        w0 = ctypes.c_uint32.from_address(base + syms["__cpu_model"] + 12)   # __cpu_features[0]
        w1 = ctypes.c_uint32.from_address(base + syms["__cpu_features2"])
        w0.value &= ~_WORD0_CLEAR
        w1.value &= ~_WORD1_CLEAR
        return f"AVX-512 hidden from {lib.name}"

    try:
        os.environ["PEFTLAB_AVX2_EMULATION_STATE"] = _hide_avx512()
    except Exception as err:  # a timing run must not pass for emulated when it is not
        raise SystemExit(f"AVX2 emulation failed ({type(err).__name__}: {err}); run without --as-avx2")
