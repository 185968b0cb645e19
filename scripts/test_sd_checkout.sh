#!/usr/bin/env bash
# Re-run kohya-ext's real-sd-scripts tests (training, GUI command, presets) against one checkout.
#
#   scripts/test_sd_checkout.sh SD_SCRIPTS_DIR [VENV_PYTHON]
#
# To try a new sd-scripts commit: `git -C SD_SCRIPTS_DIR checkout <commit>` first, then this.
# Without VENV_PYTHON, SD_SCRIPTS_DIR/venv is used, built the way users build it when missing
# (python3 -m venv, $TORCH_SPEC, pip install -r requirements.txt from the checkout). Tests run
# with this tree's .venv (`make install`; or $TEST_PYTHON); kohya-ext reaches sd-scripts' python
# through a PYTHONPATH overlay, nothing is installed into that venv. The tiny random SD1.x model
# is built once under $TINY_SD_DIR (default ~/.cache/kohya-ext/tiny-sd15, ~3.3 GB).
# About 15-25 minutes on 2 CPU cores. docs/compatibility.md says what each test checks.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: scripts/test_sd_checkout.sh SD_SCRIPTS_DIR [VENV_PYTHON]" >&2; exit 2; }
sd=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
[ -f "$sd/train_network.py" ] || { echo "test_sd_checkout: $sd has no train_network.py: not an sd-scripts checkout" >&2; exit 2; }
TORCH_SPEC=${TORCH_SPEC:-$(sed -n 's/^TORCH_SPEC ?= //p' "$here/Makefile")}
py=${2:-$sd/venv/bin/python}
if [ ! -x "$py" ]; then
  echo "test_sd_checkout: building $sd/venv (PyTorch: $TORCH_SPEC, then requirements.txt)"
  python3 -m venv "$sd/venv"
  py=$sd/venv/bin/python
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q $TORCH_SPEC
  (cd "$sd" && "$py" -m pip install -q -r requirements.txt)
fi
test_py=${TEST_PYTHON:-$here/.venv/bin/python}
[ -x "$test_py" ] || { echo "test_sd_checkout: no $test_py: run 'make install' in $here first (or set TEST_PYTHON)" >&2; exit 2; }
commit=$(git -C "$sd" rev-parse --short=8 HEAD 2>/dev/null || echo "not a git tree")
echo "test_sd_checkout: sd-scripts $sd ($commit), $("$py" -c 'import accelerate, torch; print("accelerate", accelerate.__version__, "torch", torch.__version__)')"
cd "$here"
export KOHYA_SD_SCRIPTS=$sd KOHYA_SD_PYTHON=$py TINY_SD_DIR=${TINY_SD_DIR:-$HOME/.cache/kohya-ext/tiny-sd15}
exec "$test_py" -m pytest -q -rs tests/test_train_sd_scripts.py tests/test_gui_sd_scripts.py tests/test_presets_real.py tests/test_train_sd_validation.py tests/test_train_sd_families.py "${@:3}"
