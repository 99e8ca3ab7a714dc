#!/usr/bin/env bash
# GPU check: every notebook through nbval in the `gpu` profile, plus the gpu-marked tests.
#
#   bash scripts/gpu_check.sh            # in an environment with a CUDA build of torch and the kit
#                                        # installed (pip install -e ".[lab,test]" without constraints.txt)
#
# Sized for <= 8 min on one modern GPU (A100/H100/4090); a T4 takes longer. Offline by default
# (HF_HUB_OFFLINE=1: the embedded model); set HF_HUB_OFFLINE=0 and PEFTLAB_MODEL=<hub id> to check a
# bigger model. Prints one summary line per notebook and exits non-zero if anything failed.
# Logs: artifacts/gpu_check/<name>.log
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PEFTLAB_PROFILE=gpu HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
LOGS=artifacts/gpu_check; mkdir -p "$LOGS"
PER_NOTEBOOK_S=${PER_NOTEBOOK_S:-150}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False) - nothing to check"; exit 2
fi
"$PY" -c "import torch; p=torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory/2**30:.0f} GiB, capability {p.major}.{p.minor}, torch {torch.__version__}')"
"$PY" -m peftlab.cli prepare >/dev/null 2>&1 || echo "gpu_check: peftlab prepare failed (see peftlab doctor)"

fail=0
summary=()
start=$SECONDS
if "$PY" -m pytest -q -m gpu tests >"$LOGS/gpu_tests.log" 2>&1; then r=PASS; else r=FAIL; fail=1; fi
summary+=("$(printf '%-28s %s %4ds  %s' gpu-marked-tests "$r" $((SECONDS-start)) "$(tail -n1 "$LOGS/gpu_tests.log")")")
for nb in notebooks/[0-9][0-9]_*.ipynb; do
  name=$(basename "$nb" .ipynb); t0=$SECONDS
  if timeout "$PER_NOTEBOOK_S" "$PY" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env \
       --nbval-cell-timeout="$PER_NOTEBOOK_S" "$nb" >"$LOGS/$name.log" 2>&1; then r=PASS; else r=FAIL; fail=1; fi
  why=$( [ $r = FAIL ] && grep -m1 -E "Error|error:|Timeout|Traceback" "$LOGS/$name.log" | cut -c1-110 )
  summary+=("$(printf '%-28s %s %4ds  %s' "$name" "$r" $((SECONDS-t0)) "$why")")
done
echo "---- gpu_check summary ($((SECONDS-start)) s) ----"
printf '%s\n' "${summary[@]}"
exit $fail
