#!/usr/bin/env bash
# Install kohya-ext into the active Python environment (or the one named by $PYTHON).
#
# Works in a fresh venv and in the venv users already have for sd-scripts:
# - anime-face-detector 0.1.0 declares Python >= 3.12 but runs on 3.10/3.11; on those, pip
#   would silently pick the broken mmcv-era 0.0.9, so 0.1.0 is forced with --ignore-requires-python
#   and --no-deps (its deps would replace sd-scripts' opencv-python and safetensors pins).
# - cv2: anime-face-detector's modules and kohya-ext's copy gate (kohya_ext/placed_copy.py) use it. If some OpenCV
#   (opencv-python from sd-scripts, or headless) already provides cv2, it is kept; otherwise
#   opencv-python-headless is installed.
# Usage: scripts/install.sh [--editable] [--test]
set -euo pipefail
PY=${PYTHON:-python}
here=$(cd "$(dirname "$0")/.." && pwd)
# The report extra (matplotlib for `kohya-ext report`, tensorboard for its loss curves) is
# installed by default: sd-scripts' venv has no matplotlib, and neither pins anything there.
editable=""; extras="[report]"
for a in "$@"; do
  case "$a" in
    --editable) editable="-e" ;;
    --test) extras="[report,test]" ;;
    *) echo "install.sh: unknown option $a (use --editable, --test)" >&2; exit 2 ;;
  esac
done
# Snapshot what is installed, so we can prove nothing pinned was upgraded.
"$PY" -m pip freeze --all > "${TMPDIR:-/tmp}/kohya_ext_before_install.txt" 2>/dev/null || true

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "kohya-ext needs PyTorch; install the build for your GPU first (https://pytorch.org), e.g. pip install torch torchvision" >&2
  exit 1
fi
"$PY" -m pip install --no-deps --ignore-requires-python "anime-face-detector==0.1.0"
# A stale setuptools build/ folder from an earlier non-editable install could leak old files into this one.
[ -z "$editable" ] && rm -rf "$here/build"
# Install kohya-ext without letting pip upgrade anything already present that satisfies our ranges.
"$PY" -m pip install --upgrade-strategy only-if-needed $editable "$here$extras"
if ! "$PY" -c "import cv2" 2>/dev/null; then
  echo "no working cv2 found: installing opencv-python-headless (used by anime-face-detector and the copy gate)"
  "$PY" -m pip install "opencv-python-headless>=4.8"
fi
"$PY" -c "import cv2, kohya_ext; print('kohya-ext', kohya_ext.__version__, 'installed; cv2', cv2.__version__)"
