#!/usr/bin/env bash
# Fill .carry/ (git-ignored) with what benchmarks/gpu_check.sh needs on a GPU machine without network:
#   .carry/wheels/   pycocotools (and what it needs that the machine lacks), from `pip download`
#   .carry/cifar10-jpeg.tar.gz, .carry/coco-tiny.tar.gz   copied from ../shared/data
# Run here, where PyPI is reachable:   bash benchmarks/prepare_gpu_carry.sh [PYTHON_VERSION]
# PYTHON_VERSION (default: this interpreter's, e.g. 3.11) must match the GPU machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PYVER=${1:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
SHARED=${SHARED_DATA:-../shared/data}
mkdir -p .carry/wheels
# Binary wheels only, for manylinux x86_64: the GPU machine has numpy, so pycocotools alone is fetched.
"$PY" -m pip download --dest .carry/wheels --only-binary=:all: --no-deps \
  --python-version "$PYVER" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 pycocotools
for tarball in cifar10-jpeg.tar.gz coco-tiny.tar.gz; do
  [ -f "$SHARED/$tarball" ] || { echo "prepare_gpu_carry.sh: $SHARED/$tarball not found (set SHARED_DATA)" >&2; exit 2; }
  install -m 644 "$SHARED/$tarball" .carry/
done
du -sh .carry
echo "ready: name .carry in the device tool's carry list, then run bash benchmarks/gpu_check.sh"
