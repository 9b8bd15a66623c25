#!/usr/bin/env bash
# A few epochs of each method on the real CIFAR-10 JPEGs (../shared/data/cifar10-jpeg.tar.gz),
# ResNet-18, on whatever this machine has; the records go to zoo/results/.
#   bash benchmarks/cifar10_pretrain.sh [EPOCHS] [DATA_DIR]
# RECIPES="wmse_cifar10_2views cwrgp_cifar10_2views" limits the run to some recipes.
# The papers' CIFAR stem is ~15x slower on a CPU, so the CPU runs use the ImageNet stem
# (--stem imagenet): a deviation from the recipes, recorded in every result.
set -euo pipefail
EPOCHS=${1:-2}
DATA=${2:-.data/cifar10}
if [ ! -d "$DATA/train" ]; then
  mkdir -p .data && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C .data
fi
STEM=${STEM:-imagenet}
for recipe in ${RECIPES:-wmse_cifar10_2views cwrgp_cifar10_2views intl_cifar10}; do
  out=runs/cifar10_${recipe}_${STEM}_e${EPOCHS}
  cmd="python -m wssl_zoo.pretrain --recipe $recipe --data $DATA --out $out --epochs $EPOCHS --stem $STEM --workers 2 --eval-every 0 --no-progress"
  record="zoo/results/pretrain_${recipe}_${STEM}_e${EPOCHS}.json"
  rm -rf "$out" "$record"  # a re-run replaces its own run and record (the writer refuses another measurement's file)
  echo "+ $cmd"
  $cmd
  python -m wssl_zoo.pretrain.evaluate --model "$out" --dataset cifar10 --data "$DATA" \
    --command "$cmd" --out "$record"
done
