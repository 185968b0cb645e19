#!/usr/bin/env bash
# Prove kohya-ext installs cleanly into an existing sd-scripts venv and leaves sd-scripts working.
#
# Usage: scripts/check_sdscripts_venv.sh SD_SCRIPTS_DIR VENV_PYTHON
#   SD_SCRIPTS_DIR  a kohya-ss/sd-scripts checkout whose requirements.txt is installed in the venv
#   VENV_PYTHON     that venv's python (kohya-ext is installed INTO it: use a throw-away copy)
# Environment:
#   TINY_SD_DIR   where the tiny random SD1.x model is built / reused (default ~/.cache/kohya-ext/tiny-sd15)
#   CLIP_BPE      CLIP's bpe_simple_vocab_16e6.txt.gz or an open_clip_torch wheel (optional, see tests/sd_tiny_model.py)
#   CHECK_OUT     folder for logs, freezes and the training output (default: a new temp folder)
#   SKIP_TRAIN=1  skip the train_network.py run
# Prints one PASS/FAIL line per check and exits non-zero if any check failed.
set -uo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 SD_SCRIPTS_DIR VENV_PYTHON" >&2
  exit 2
fi
SD=$(cd "$1" && pwd) || { echo "FAIL sd-scripts folder $1 not found" >&2; exit 2; }
PY=$2
[ -x "$PY" ] || { echo "FAIL venv python $PY is not executable" >&2; exit 2; }
[ -f "$SD/train_network.py" ] || { echo "FAIL $SD has no train_network.py: not an sd-scripts checkout" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${CHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/kohya_ext_sdcheck.XXXXXX")}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
TINY=${TINY_SD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kohya-ext/tiny-sd15}
mkdir -p "$(dirname "$TINY")" && TINY=$(cd "$(dirname "$TINY")" && pwd)/$(basename "$TINY")
fails=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# run NAME CMD...: PASS/FAIL on the exit code; the command's last output line is appended.
# Runs in $OUT so that `python -` imports the installed kohya_ext, not the checkout's source.
run() {
  local name=$1; shift
  local log="$OUT/$name.log" t0=$SECONDS
  if (cd "$OUT" && "$@") >"$log" 2>&1; then pass "$name ($((SECONDS - t0)) s): $(tail -n 1 "$log")"
  else fail "$name ($((SECONDS - t0)) s): $(tail -n 1 "$log") [log: $log]"; fi
}
echo "sd-scripts: $SD ($(git -C "$SD" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout"))"
echo "venv python: $PY ($("$PY" -V 2>&1)); output: $OUT"

# 1. What the venv holds before kohya-ext (no pip self-check noise in the freeze).
"$PY" -m pip freeze --all 2>/dev/null | sort >"$OUT/freeze_before.txt"

# 2. The tiny model is built with the venv's diffusers before kohya-ext is installed (reused if present).
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  if [ -f "$TINY/tiny_sd.json" ]; then
    pass "tiny-model: reusing $TINY"
  else
    t0=$SECONDS
    if "$PY" "$HERE/tests/sd_tiny_model.py" "$TINY" ${CLIP_BPE:+--bpe "$CLIP_BPE"} >"$OUT/tiny-model.log" 2>&1; then
      pass "tiny-model ($((SECONDS - t0)) s): built in $TINY ($(grep -o '"tokenizer_source": "[^"]*"' "$OUT/tiny-model.log"))"
    else
      fail "tiny-model ($((SECONDS - t0)) s) [log: $OUT/tiny-model.log]"
    fi
  fi
fi

# 3. Install kohya-ext the way users are told to.
t0=$SECONDS
if PYTHON="$PY" "$HERE/scripts/install.sh" >"$OUT/install.log" 2>&1; then
  pass "install.sh ($((SECONDS - t0)) s): $(tail -n 1 "$OUT/install.log")"
else
  fail "install.sh ($((SECONDS - t0)) s) [log: $OUT/install.log]"
  tail -n 20 "$OUT/install.log"
fi
"$PY" -m pip freeze --all 2>/dev/null | sort >"$OUT/freeze_after.txt"

# 4. Nothing pinned by sd-scripts moved; cv2 still comes from opencv-python alone.
run pins "$PY" - "$SD/requirements.txt" "$OUT/freeze_before.txt" "$OUT/freeze_after.txt" <<'EOF'
import re, sys
req, before_path, after_path = sys.argv[1:]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
def freeze(path):
    out = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:==| @ )(\S+)", line.strip())
        if m:
            out.setdefault(norm(m[1]), []).append(m[2])
    return out
pins = {}
for line in open(req):
    m = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line.split("#")[0].strip())
    if m:
        pins[norm(m[1])] = m[3]
before, after = freeze(before_path), freeze(after_path)
bad = []
for name, ver in sorted(pins.items()):
    if after.get(name) != [ver]:
        bad.append(f"{name}: pinned {ver}, before {before.get(name)}, after {after.get(name)}")
changed = [f"{n} {before[n]} -> {after.get(n)}" for n in before if after.get(n) != before[n]]
added = sorted(f"{n} {after[n][0]}" for n in after if n not in before)
# Another OpenCV distribution would overwrite cv2/ under opencv-python ("doubled").
opencvs = sorted(n for n in after if n.startswith("opencv"))
if opencvs != ["opencv-python"]:
    bad.append(f"OpenCV distributions after install: {opencvs} (want only opencv-python)")
for c in changed:
    bad.append(f"changed: {c}")
print("added:", ", ".join(added) or "nothing")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"{len(pins)} pins of requirements.txt unchanged, {len(before)} packages before, none changed; added: {', '.join(added)}")
EOF

run cv2 "$PY" - <<'EOF'
import importlib.metadata as md
import cv2, numpy as np
owners = md.packages_distributions().get("cv2")
ver = md.version("opencv-python")
assert owners == ["opencv-python"], f"cv2 is provided by {owners}, want only opencv-python"
assert ver == "4.10.0.84", f"opencv-python is {ver}, sd-scripts pins 4.10.0.84"
img = cv2.resize(np.zeros((8, 8, 3), np.uint8), (4, 4))
print(f"cv2 {cv2.__version__} from {owners} {ver}, resize works {img.shape}")
EOF

run safetensors "$PY" -c "import importlib.metadata as m, safetensors; v = m.version('safetensors'); assert v == '0.4.5', v; print('safetensors', v)"

run kohya_ext "$PY" - "${KOHYA_EXT_SHARED:-$HERE/../shared}/data/tadne/grid.jpg" <<'EOF'
import sys
from pathlib import Path
import numpy as np
import kohya_ext
where = Path(kohya_ext.__file__).parent
assert "site-packages" in where.parts, f"kohya_ext imported from {where}, not from the venv's site-packages"
msg = f"kohya_ext {kohya_ext.__version__} from {where}"
from kohya_ext.backends.nvxs import NvxsBackend
backend = NvxsBackend(threads=1)
grid = Path(sys.argv[1])
if grid.exists():
    from kohya_ext.images import load_image
    g = load_image(grid)
    tiles = [g[:512, i * 512 : (i + 1) * 512] for i in range(6)]  # the first row of portraits
    hits = sum(bool(r.faces) for r in backend.detect(tiles))
    assert hits >= 4, f"nvxs found faces in only {hits} of the 6 TADNE tiles of row 1 (5 expected)"
    msg += f"; NvxsBackend found faces in {hits}/6 TADNE tiles"
else:
    backend.detect([np.zeros((64, 64, 3), np.uint8)])
    msg += "; NvxsBackend loads (no shared data to detect on)"
print(msg + f"; {backend.identity()['library']}")
EOF

run anime_face_detector "$PY" - "$OUT" <<'EOF'
import importlib.metadata as md, sys, warnings
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file
import anime_face_detector
from anime_face_detector import LandmarkDetector
from anime_face_detector._landmark import LandmarkModel
from anime_face_detector._weights import load_state_dict_from_path
ver = md.version("anime-face-detector")
assert ver == "0.1.0", f"anime-face-detector {ver}, want 0.1.0"
torch.manual_seed(0)
model = LandmarkModel()
path = Path(sys.argv[1]) / "random_landmark.safetensors"
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
sd = load_state_dict_from_path(path)
ref = model.state_dict()
assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref), "reloaded state dict differs"
det = LandmarkDetector(path, device="cpu", flip_test=False)  # strict load + cv2 preprocessing
img = np.full((96, 96, 3), 128, np.uint8)
out = det(img, boxes=[np.array([8, 8, 88, 88, 1.0])])
assert out[0]["keypoints"].shape == (28, 3), out[0]["keypoints"].shape
print(f"anime-face-detector {ver}: random LandmarkModel ({len(sd)} tensors) saved and reloaded with "
      f"safetensors {md.version('safetensors')}, LandmarkDetector ran: 28 points")
EOF

# Every documented command has what it needs (tests/test_documented_commands.py runs them all).
run report-deps "$PY" -c "import matplotlib, tensorboard; print('kohya-ext report: matplotlib', matplotlib.__version__, '+ tensorboard', tensorboard.__version__)"

run sd-scripts-import bash -c "cd '$SD' && '$PY' -c 'import library.train_util, networks.lora; print(\"library.train_util and networks.lora import\")'"

# 5. sd-scripts still trains: a LoRA on the tiny random model, 4 steps on CPU, checkpoints + samples + TensorBoard.
if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  train_out="$OUT/train"
  rm -rf "$train_out"
  mapfile -t targs < <("$PY" -c "
import sys; sys.path.insert(0, '$HERE/tests')
from sd_tiny_model import load_tiny_sd
print('\n'.join(load_tiny_sd('$TINY').train_network_args('$train_out', steps=4, save_every=2, sample_every=2)))")
  t0=$SECONDS
  (cd "$SD" && "$PY" -m accelerate.commands.launch --num_cpu_threads_per_process 2 --num_processes 1 \
    --num_machines 1 --mixed_precision no --dynamo_backend no train_network.py "${targs[@]}") >"$OUT/train.log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
  run train-outputs "$PY" - "$train_out" "$rc" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
out, rc = Path(sys.argv[1]), int(sys.argv[2])
assert rc == 0, f"train_network.py exited {rc}"
ckpts = sorted(p.name for p in out.glob("*.safetensors"))
want = ["tiny-step00000002.safetensors", "tiny-step00000004.safetensors", "tiny.safetensors"]
assert ckpts == want, f"checkpoints {ckpts}, want {want}"
samples = sorted((out / "sample").glob("*.png"))
assert len(samples) == 4, f"{len(samples)} sample images, want 4 (2 prompts x steps 2, 4)"
flat = [p.name for p in samples if np.asarray(Image.open(p)).std() == 0]
assert not flat, f"blank (NaN) sample images: {flat}"
events = list(out.glob("logs/**/events.out.tfevents.*"))
assert events, "no TensorBoard event file under logs/"
print(f"{len(ckpts)} checkpoints, {len(samples)} non-blank samples, {len(events)} TensorBoard event file(s)")
EOF
  echo "train_network.py: rc=$rc, $secs s wall for 4 LoRA steps + 2 checkpoints + 4 samples (log: $OUT/train.log)"
fi

if [ "$fails" -gt 0 ]; then
  echo "RESULT: $fails check(s) FAILED"
  exit 1
fi
echo "RESULT: all checks passed"
