#!/usr/bin/env bash
# Loop the two-process training tests (stand-in and GUI path, every accelerate variant) N times and
# count the runs in which every rank exited cleanly (issue 17: gloo's abort at interpreter exit).
# Usage: scripts/loop_two_process.sh [N=30] [PYTHON=.venv/bin/python]
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:-30}
py=${PYTHON:-.venv/bin/python}
tests=(tests/test_train_standin.py::test_two_gloo_processes_stop_at_the_same_step_despite_a_hang
       tests/test_gui_network.py::test_gui_two_processes_stop_at_the_same_step)
clean=0
for i in $(seq 1 "$n"); do
  if out=$("$py" -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1); then
    clean=$((clean + 1)); echo "run $i: clean ($(tail -n 1 <<<"$out"))"
  else
    echo "run $i: FAILED"; grep -E "terminate called|exit|Error|assert" <<<"$out" | head -n 5
  fi
done
echo "$clean/$n runs clean"
[ "$clean" -eq "$n" ]
