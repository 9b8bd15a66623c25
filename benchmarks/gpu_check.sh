#!/usr/bin/env bash
# Every GPU table of the project in one command, for the few minutes a GPU machine is lent.
#
#   bash benchmarks/prepare_gpu_carry.sh          # here, with network: fills .carry/ (git-ignored)
#   bash benchmarks/gpu_check.sh [--out DIR]      # there, on one H100/H200, no network: < 8 min
#   bash benchmarks/gpu_check.sh --dry-run        # any CPU: every part at tiny size (4 min on a busy 2-core box)
#
# Writes one Markdown file per table into DIR (default runs/gpu_check_<UTC time>), each with the date,
# the machine (nvidia-smi and torch's device name) and the command that produced it, RESULTS.md-ready:
#   00_machine.md      date, GPU, driver, torch, CPUs
#   01_losses.md       losses, wssl-zoo vs the plain loop, fp32, all paper configurations (benchmarks/losses.py)
#   02_pretrain_r18.md pretraining step views/s, ResNet-18 CIFAR stem @ 32 px, recipe batches, beside a
#                      cross-entropy step of the same backbone and batch; eager and torch.compile; peak memory
#   03_pretrain_r50.md the same for ResNet-50 @ 224 px, bf16, channels_last
#   04_pipeline.md     the input pipeline beside the step: host CPU ms per view of the PIL path and of
#                      --device-views' host part, the device part's views/s on the GPU, the cores per GPU
#                      each path needs with the step tables above, a DataLoader with all CPU workers, and
#                      the GPU's JPEG decode against PIL's (benchmarks/input_pipeline.py)
#   04b_device_views_run.md  views/s of short CW-RGP and INTL_M ImageNet runs (ResNet-50, bf16) with
#                      --device-views on synthetic 500 x 375 JPEGs (benchmarks/device_views_run.py)
#   05_cifar_runs.md   W-MSE and INTL ResNet-18 (CIFAR stem) on the CIFAR-10 JPEGs for TRAIN_SECONDS each
#                      (epochs estimated from the step and loader tables), then kNN and the fast linear probe,
#                      as records in DIR/records/ (never zoo/results)
#   06_linear_probe.md feature extraction + fast linear probe time against the augmented protocol
#                      (benchmarks/linear_probe.py, on the INTL run)
#   07_detection.md    seconds per iteration of Mask R-CNN R50-C4 at 800 px, protocol batch 2 per GPU
#                      (benchmarks/detection_speed.py), and a pycocotools read of coco-tiny's annotations
#   08_eval_scale.md   feature extraction images/s and peak RSS per rank at 2k/8k/32k CIFAR-10 JPEGs (sharded to
#                      disk against gathered in memory), seconds per augmented linear epoch (ResNet-50 @ 224 px)
#                      per 1,000 images and the ImageNet projection (benchmarks/eval_scale.py)
# A part that fails writes FAILED into its file and the script goes on; the exit status is then 1.
# Environment: TRAIN_SECONDS (default 60 on a GPU: with the compile rows, 2 x 3 minutes of training would
# not fit in 8 minutes; set 180 when the machine is lent for longer), PYTHON (default python).
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]"
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder; $usage" >&2; exit 2; }; OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1; $usage" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu_check_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/records" "$OUT/runs" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
START=$(date +%s)
STATUS=0
CARRY="$REPO/.carry"
NPROC=$(nproc)

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  # One thread per process: on a small, busy CPU several OpenMP threads per process spin against
  # each other (a tiny ResNet-18 step took 20x longer with 2 threads than with 1 on a loaded 2-core box).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  TRAIN_SECONDS=${TRAIN_SECONDS:-5}
else
  DEVICE=cuda
  TRAIN_SECONDS=${TRAIN_SECONDS:-60}
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU" >&2
    exit 2
  fi
fi

say() { echo "[gpu_check $(( $(date +%s) - START ))s] $*" | tee -a "$LOG" >&2; }

MACHINE=$("$PY" - "$DEVICE" <<'EOF'
import os, platform, sys, torch
dev = sys.argv[1]
name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU only ({platform.machine()})"
print(f"{name}, torch {torch.__version__}, {os.cpu_count()} CPUs")
EOF
)

# part FILE TITLE LIMIT_S CMD...: run CMD (stdout is the table), write FILE.md with a header.
part() {
  local file=$1 title=$2 limit=$3
  shift 3
  local md="$OUT/$file.md" tmp="$OUT/.$file.out" rc
  say "start $file: $*"
  timeout "$limit" "$@" >"$tmp" 2>>"$LOG"
  rc=$?
  {
    echo "## $title"
    echo
    echo "$(date -u +%Y-%m-%d), $MACHINE$([ "$DRY" = 1 ] && echo ', DRY RUN (tiny sizes, CPU): not a measurement')."
    echo
    echo "\`$*\`"
    echo
    cat "$tmp"
    if [ $rc -ne 0 ]; then
      echo
      echo "FAILED (exit $rc$([ $rc = 124 ] && echo ", killed after ${limit}s")), see gpu_check.log"
    fi
  } >"$md"
  rm -f "$tmp"
  if [ $rc -ne 0 ]; then STATUS=1; say "FAILED $file (exit $rc)"; else say "done $file"; fi
  return $rc
}

# ------------------------------------------------------------------ setup: wheels and data, no network
if ! "$PY" -c "import pycocotools" 2>/dev/null; then
  if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
    say "installing pycocotools from .carry/wheels (no index)"
    "$PY" -m pip install --no-index --find-links "$CARRY/wheels" pycocotools >>"$LOG" 2>&1 || STATUS=1
  else
    say "pycocotools missing and no .carry/wheels: run bash benchmarks/prepare_gpu_carry.sh where there is network"
    STATUS=1
  fi
fi

DATA="$OUT/data"
mkdir -p "$DATA"
if [ "$DRY" = 1 ]; then
  # A CIFAR-10-shaped ImageFolder of synthetic 32 px JPEGs (10 classes), so the dry run needs no data.
  "$PY" - "$DATA/cifar10" <<'EOF' || exit 1
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from input_pipeline import write_jpegs
root = Path(sys.argv[1])
for c in range(10):
    write_jpegs(root, 8, (32, 32), seed=c, split="train", cls=f"class{c}")
    write_jpegs(root, 4, (32, 32), seed=100 + c, split="test", cls=f"class{c}")
EOF
  COCO_TAR=""
  [ -f "$CARRY/coco-tiny.tar.gz" ] && COCO_TAR="$CARRY/coco-tiny.tar.gz"
  [ -z "$COCO_TAR" ] && [ -f ../shared/data/coco-tiny.tar.gz ] && COCO_TAR=../shared/data/coco-tiny.tar.gz
else
  for tarball in cifar10-jpeg.tar.gz coco-tiny.tar.gz; do
    [ -f "$CARRY/$tarball" ] || { say "missing .carry/$tarball: run bash benchmarks/prepare_gpu_carry.sh first"; exit 2; }
  done
  say "unpacking the CIFAR-10 JPEGs"
  tar xzf "$CARRY/cifar10-jpeg.tar.gz" -C "$DATA" || exit 1
  COCO_TAR="$CARRY/coco-tiny.tar.gz"
fi
CIFAR="$DATA/cifar10"

# ------------------------------------------------------------------ 00 machine
{
  echo "## Machine"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $MACHINE$([ "$DRY" = 1 ] && echo ', DRY RUN')"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  echo '```'
} >"$OUT/00_machine.md"

# ------------------------------------------------------------------ 01 losses
if [ "$DRY" = 1 ]; then
  part 01_losses "Losses: wssl-zoo vs the plain loop" 120 \
    "$PY" benchmarks/losses.py --device cpu --repeats 1 --warmup 0 --scale 8 --json "$OUT/losses.json"
else
  part 01_losses "Losses: wssl-zoo vs the plain loop, fp32 CUDA" 120 \
    "$PY" benchmarks/losses.py --device cuda --repeats 7 --warmup 2 --json "$OUT/losses.json"
fi

# ------------------------------------------------------------------ 02/03 pretraining steps
if [ "$DRY" = 1 ]; then
  SMALL=(--device cpu --tiny --repeats 1 --warmup 0 --compile-backend eager)
  part 02_pretrain_r18 "Pretraining step, ResNet-18 @ 32 px" 300 \
    "$PY" benchmarks/pretrain.py "${SMALL[@]}" --only "wmse R18" --compile both --json "$OUT/pretrain_r18.json"
  # fp32 here: bf16 convolutions are emulated (minutes) on CPUs without AMX; the GPU run uses bf16.
  part 03_pretrain_r50 "Pretraining step, ResNet-50, channels_last" 240 \
    "$PY" benchmarks/pretrain.py "${SMALL[@]}" --only "intl R50" --channels-last --json "$OUT/pretrain_r50.json"
else
  # Eager rows for every method; compiled rows for W-MSE and INTL (each compile costs tens of seconds).
  part 02_pretrain_r18 "Pretraining step, ResNet-18 (CIFAR stem) @ 32 px, recipe batches, fp32" 150 \
    "$PY" benchmarks/pretrain.py --device cuda --only R18 --repeats 5 --warmup 2 --json "$OUT/pretrain_r18.json"
  part 02_pretrain_r18_compile "Pretraining step, ResNet-18 @ 32 px, torch.compile" 150 \
    "$PY" benchmarks/pretrain.py --device cuda --only "wmse R18" "intl R18" --compile yes --repeats 5 --warmup 2 \
    --json "$OUT/pretrain_r18_compile.json"
  part 03_pretrain_r50 "Pretraining step, ResNet-50 @ 224 px, bf16, channels_last, recipe per-GPU batches" 150 \
    "$PY" benchmarks/pretrain.py --device cuda --only R50 --amp bf16 --channels-last --repeats 3 --warmup 1 \
    --json "$OUT/pretrain_r50.json"
  part 03_pretrain_r50_compile "Pretraining step, ResNet-50 @ 224 px, bf16, channels_last, torch.compile" 120 \
    "$PY" benchmarks/pretrain.py --device cuda --only "intl R50" --amp bf16 --channels-last --compile yes \
    --repeats 3 --warmup 1 --json "$OUT/pretrain_r50_compile.json"
fi
TABLES=()
for f in "$OUT"/pretrain_r*.json; do [ -f "$f" ] && TABLES+=("$f"); done

# ------------------------------------------------------------------ 04 data pipeline
if [ "$DRY" = 1 ]; then
  PIPE=(--sizes 32 224 --methods wmse intl intl_m --images 4 --seconds 0 --min-images 2 --loader-workers 1
        --loader-batches 1 --batch 2 --device-repeats 1)
else
  PIPE=(--images 64 --seconds 1.5 --loader-workers "$NPROC" --loader-batches 4 --batch 128 --device-repeats 3)
fi
part 04_pipeline "Input pipeline: host CPU per view (PIL, --device-views), device part views/s, cores per GPU" 200 \
  "$PY" benchmarks/input_pipeline.py "${PIPE[@]}" --device "$DEVICE" \
  ${TABLES[@]:+--gpu-table "${TABLES[@]}"} --json "$OUT/pipeline.json"

# ------------------------------------------------------------------ 04b --device-views in short real runs
# CW-RGP's and INTL_M's ImageNet recipes, ResNet-50 bf16, on synthetic 500 x 375 JPEGs: the loader with
# all but one core, the device part and the step together (benchmarks/device_views_run.py).
SYNTH="$DATA/synth224"
if [ "$DRY" = 1 ]; then
  NSYNTH=16; VIEWRUN=(--device cpu --tiny --batch-size 8 --steps 2 --workers 1)
else
  NSYNTH=512; VIEWRUN=(--device cuda --amp bf16 --channels-last --batch-size 256 --steps 8 --workers $((NPROC - 1)))
fi
"$PY" - "$SYNTH" "$NSYNTH" <<'EOF' || STATUS=1
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from input_pipeline import write_jpegs
write_jpegs(Path(sys.argv[1]), int(sys.argv[2]), (500, 375))
EOF
part 04b_device_views_run "Short pretraining runs with --device-views: loader, device part and step together" 180 \
  "$PY" benchmarks/device_views_run.py --data "$SYNTH" "${VIEWRUN[@]}"

# ------------------------------------------------------------------ 05 short real runs on CIFAR-10
# Epochs from the measured tables: budget x min(step views/s, loader views/s) / (50,000 images x views).
epochs_for() {
  "$PY" - "$1" "$2" "$TRAIN_SECONDS" "$OUT" "$CIFAR" <<'EOF'
import json, math, sys
from pathlib import Path
method, size, budget, out, data = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
images = sum(1 for _ in (data / "train").rglob("*.jpg"))
rates = []
for name in ("pretrain_r18.json", "pipeline.json"):
    try:
        rows = json.loads((out / name).read_text())["rows"]
    except (OSError, ValueError, KeyError):
        continue
    for r in rows:
        if name.startswith("pretrain") and r["config"] == f"{method} R18 {size}px" and r["compile"] == "no":
            rates.append(r["views_s"])
        if name == "pipeline.json" and (r["method"], r["size"]) == (method, size) and r.get("loader_views_s"):
            rates.append(r["loader_views_s"])
views = 2
print(max(1, math.floor(budget * min(rates) / (images * views))) if rates else 1)
EOF
}
{
  echo "## Short CIFAR-10 runs (ResNet-18, $([ "$DRY" = 1 ] && echo 'ImageNet stem in the dry run' || echo 'CIFAR stem')), $TRAIN_SECONDS s budget each"
  echo
  echo "$(date -u +%Y-%m-%d), $MACHINE$([ "$DRY" = 1 ] && echo ', DRY RUN (synthetic 32 px JPEGs, 2 steps, ImageNet stem: the CIFAR stem costs 15x more on a CPU): not a measurement')."
  echo
  echo "| recipe | epochs | train wall s | kNN top-1 | fast linear top-1 | records |"
  echo "|---|---|---|---|---|---|"
} >"$OUT/05_cifar_runs.md"
for recipe in wmse_cifar10_2views intl_cifar10; do
  method=${recipe%%_*}
  run="$OUT/runs/$recipe"
  if [ "$DRY" = 1 ]; then
    epochs=1
    extra=(--steps-per-epoch 2 --batch-size 16 --workers 1 --set projector.out_dim=8 --device cpu --stem imagenet)
    [ "$method" = wmse ] && extra+=(--set loss.w_size=16)
  else
    epochs=$(epochs_for "$method" 32)
    extra=(--workers "$NPROC" --device cuda)
  fi
  cmd=("$PY" -m wssl_zoo.pretrain --recipe "$recipe" --data "$CIFAR" --out "$run" --epochs "$epochs"
       --eval-every 0 --no-progress "${extra[@]}")
  say "train $recipe for $epochs epochs: ${cmd[*]}"
  rm -rf "$run"
  t0=$(date +%s)
  if timeout $(( TRAIN_SECONDS * 3 + 120 )) "${cmd[@]}" >>"$LOG" 2>&1; then
    wall=$(( $(date +%s) - t0 ))
    knn="$OUT/records/knn_${recipe}"  # a folder: eval.knn writes one record per protocol
    lin="$OUT/records/linear_fast_${recipe}.json"
    EV=(--model "$run" --dataset cifar10 --data "$CIFAR" --device "$DEVICE" --no-progress
        --workers "$([ "$DRY" = 1 ] && echo 1 || echo "$NPROC")" --cache-dir "$OUT/cache")
    timeout 300 "$PY" -m eval.knn "${EV[@]}" --out "$knn" >>"$LOG" 2>&1 || { STATUS=1; say "FAILED kNN of $recipe"; }
    timeout 300 "$PY" -m eval.linear "${EV[@]}" --protocol fast --out "$lin" >>"$LOG" 2>&1 \
      || { STATUS=1; say "FAILED fast linear of $recipe"; }
    "$PY" - "$recipe" "$epochs" "$wall" "$knn" "$lin" >>"$OUT/05_cifar_runs.md" <<'EOF'
import json, sys
from pathlib import Path
recipe, epochs, wall, knn, lin = sys.argv[1:]
def top1(path):
    try:
        return f"{json.loads(Path(path).read_text())['metrics']['top1']:.2f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "FAILED"
def protocol(path):
    try:
        proto = json.loads(Path(path).read_text())["protocol"]
        return proto["name"] if isinstance(proto, dict) else str(proto)
    except (OSError, ValueError, KeyError, TypeError):
        return Path(path).stem
knns = sorted(Path(knn).glob("*.json"))  # one record per kNN protocol
knn_cell = ", ".join(f"{protocol(p)}: {top1(p)}" for p in knns) or "FAILED"
names = ", ".join(f"`{p.relative_to(Path(knn).parent.parent)}`" for p in [*knns, Path(lin)])
print(f"| {recipe} | {epochs} | {wall} | {knn_cell} | {top1(lin)} | {names} |")
EOF
  else
    STATUS=1
    say "FAILED training $recipe"
    echo "| $recipe | $epochs | FAILED, see gpu_check.log | | | |" >>"$OUT/05_cifar_runs.md"
  fi
  echo "| | | \`${cmd[*]}\` | | | |" >>"$OUT/05_cifar_runs.md"
done

# ------------------------------------------------------------------ 06 feature extraction + fast linear probe
if [ -f "$OUT/runs/intl_cifar10/model.safetensors" ] || [ -d "$OUT/runs/intl_cifar10" ]; then
  if [ "$DRY" = 1 ]; then LP=(--device cpu --workers 1 --aug-epochs 1 --train-subset 20); else LP=(--device cuda --workers "$NPROC" --aug-epochs 1); fi
  part 06_linear_probe "Feature extraction and the fast linear probe (INTL run above)" 240 \
    "$PY" benchmarks/linear_probe.py --model "$OUT/runs/intl_cifar10" --dataset cifar10 --data "$CIFAR" "${LP[@]}" \
    --results-dir "$OUT/records"
fi

# ------------------------------------------------------------------ 07 detection
if [ "$DRY" = 1 ]; then
  DET=(--device cpu --arch resnet18 --size 128 --batch-sizes 1 --iters 1 --warmup 0 --light)
else
  DET=(--device cuda --batch-sizes 2 4 --iters 5 --warmup 2 --amp)
fi
part 07_detection "Detection: Mask R-CNN R50-C4 (coco_R_50_C4_1x), s/iter" 200 \
  "$PY" benchmarks/detection_speed.py "${DET[@]}"
if [ -n "${COCO_TAR:-}" ]; then
  tar xzf "$COCO_TAR" -C "$DATA" && "$PY" - "$DATA/coco-tiny/annotations/instances_val2017.json" >>"$OUT/07_detection.md" 2>>"$LOG" <<'EOF' || { STATUS=1; say "FAILED pycocotools read of coco-tiny"; }
import contextlib, io, sys
from pycocotools.coco import COCO
with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO(sys.argv[1])
print(f"\npycocotools reads coco-tiny val: {len(coco.getImgIds())} images, {len(coco.getAnnIds())} annotations.")
EOF
fi

# ------------------------------------------------------------------ 08 evaluation at scale
if [ "$DRY" = 1 ]; then
  ES=(--device cpu --sizes 32 64 --ranks 1 2 --modes shards --workers 1 --aug-images 20 --aug-arch resnet18
      --aug-img-size 32)
else
  # 2 ranks need 2 GPUs (NCCL puts one rank on each): one rank here
  ES=(--device cuda --sizes 2000 8000 32000 --ranks 1 --workers "$NPROC" --aug-images 2000)
fi
part 08_eval_scale "Evaluation at scale: feature extraction per rank, augmented linear epoch, ImageNet projection" 240 \
  "$PY" benchmarks/eval_scale.py --data "$CIFAR" "${ES[@]}" --json "$OUT/eval_scale.json"

say "finished in $(( $(date +%s) - START ))s, tables in $OUT (status $STATUS)"
echo "$OUT"
exit $STATUS
