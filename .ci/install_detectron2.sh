#!/usr/bin/env bash
# Installs detectron2's pure-Python part into the active Python environment, so that the tests of the
# detectron2 path (tests/test_detectron2_real.py) run against detectron2's own code on the CPU.
#   bash .ci/install_detectron2.sh            # after the project install, in the same venv (.ci/run does this)
# PyPI has no detectron2 wheel for current Pythons, and its sdists (pb1-detectron2 0.6) lack the C++
# sources; the Python package works without them once an `_C.py` with the three functions
# `default_setup` asks for sits beside it (no rotated boxes, deformable conv or fast COCOeval), and with
# `Image.LINEAR` written as `Image.BILINEAR` (its value) for Pillow >= 10.
# Self-sufficient: it installs what it uses itself (the sdist's metadata is read with setuptools and
# wheel, which it installs first, not with whatever another package happened to pull in) and checks the
# sdist against its pinned sha256. When something is missing it prints why; outside CI it then exits 0
# and the detectron2 tests skip, in CI (CI=true) it exits 1, as a skipped detectron2 test fails there.
set -uo pipefail
PY=${PYTHON:-python}
VERSION=0.6
# sha256 of pb1-detectron2-0.6.tar.gz on PyPI (pip download, 2026-12-07)
SDIST_SHA256=5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29
skip() {
  case "${CI:-}" in
    1|true|TRUE|True|yes) echo "install_detectron2: $*; CI=true needs detectron2" >&2; exit 1 ;;
  esac
  echo "install_detectron2: $*; the detectron2 tests will skip" >&2; exit 0
}

"$PY" -c "import torch" 2>/dev/null || skip "torch is not importable by $PY (install the project first)"
if "$PY" -c "import detectron2, fvcore, yacs" 2>/dev/null; then
  echo "install_detectron2: detectron2 is already importable"; exit 0
fi
SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || skip "no site-packages for $PY"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# pip reads an sdist's metadata by running its setup.py, which imports torch: so not in an isolated build
# environment (--no-build-isolation), but with this environment's torch and the setuptools and wheel
# installed here first. Nothing is built; the hash pins the file.
"$PY" -m pip install --quiet "setuptools>=68" "wheel>=0.40" \
  || skip "could not install setuptools and wheel (to read the sdist's metadata)"
echo "pb1-detectron2==$VERSION --hash=sha256:$SDIST_SHA256" > "$TMP/requirements.txt"
"$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation --require-hashes \
  -r "$TMP/requirements.txt" -d "$TMP" \
  || skip "could not download the pb1-detectron2==$VERSION sdist (sha256 $SDIST_SHA256) from the package index"
SDIST=$(ls "$TMP"/pb1*detectron2-"$VERSION".tar.gz 2>/dev/null | head -1)
[ -n "$SDIST" ] || skip "pip download gave no pb1-detectron2-$VERSION.tar.gz"
tar xzf "$SDIST" -C "$TMP" || skip "could not unpack $SDIST"
SRC=$(dirname "$(ls -d "$TMP"/*/detectron2/__init__.py | head -1)")
[ -f "$SRC/config/defaults.py" ] || skip "$SDIST has no detectron2 package folder"
"$PY" -m pip install --quiet "fvcore==0.1.5.post20221221" "iopath==0.1.9" yacs tabulate termcolor cloudpickle \
  omegaconf hydra-core tensorboard pycocotools || skip "could not install detectron2's dependencies (fvcore, iopath, yacs, ...)"
rm -rf "$SP/detectron2"
cp -r "$SRC" "$SP/detectron2"
# Pillow 10 removed Image.LINEAR, an alias of Image.BILINEAR that detectron2 0.6 uses as a default argument
# (so at import time); detectron2's later sources write BILINEAR. Same value, so same behaviour.
grep -rl "Image\.LINEAR" "$SP/detectron2" | xargs -r sed -i 's/Image\.LINEAR/Image.BILINEAR/g'
printf 'def get_compiler_version():\n    return "none"\n\n\ndef get_cuda_version():\n    return "none"\n\n\ndef has_cuda():\n    return False\n' \
  > "$SP/detectron2/_C.py"
if ! "$PY" -c "from detectron2.config import get_cfg; from detectron2.modeling import build_model; c = get_cfg(); c.MODEL.DEVICE = 'cpu'; build_model(c)" 2>"$TMP/err"; then
  rm -rf "$SP/detectron2"
  skip "detectron2 $VERSION does not import here ($(tail -1 "$TMP/err")); removed it again"
fi
echo "install_detectron2: detectron2 $VERSION (pure Python, stub _C) installed in $SP"
