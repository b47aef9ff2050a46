#!/usr/bin/env bash
# The target screen's arms (issue 22) on a machine with two GPUs, one arm per GPU at a time:
#   bash benchmarks/gpu_arms.sh studies/resnet18-b256.toml [ARM_BUDGET_S]
# First both GPUs train and cache the baseline once (two arms training it at the same time took
# 97 s each on an H200 pair and the first arms ran past the call's limit); then curated on GPU 0
# beside every-choice on GPU 1, then no-space on GPU 0; then --merge-arms joins the three.
# Results under $OUT/arms (default /tmp/arms): the joined .md/.json, each arm's folder and log.
set -u
study=$1
budget=${2:-150}
out=${OUT:-/tmp}/arms
mkdir -p "$out"
export SLIMTUNE_CACHE=${SLIMTUNE_CACHE:-/tmp/slimtune-cache} PYTHONUNBUFFERED=1
args="--arm-budget-s $budget --screen-budget-s 60 --setting-timeout-s 60"
limit=$(( budget * 2 + 120 ))  # setup, the budget, one trial past it
arm() {  # gpu arm folder
  CUDA_VISIBLE_DEVICES=$1 timeout $limit python3 benchmarks/gpu_study.py "$study" --arms "$2" $args \
    --out "$out/$3" > "$out/$3.log" 2>&1
  echo "$2 on GPU $1: rc $?" | tee -a "$out/rc.txt"
}
# the baseline: trained once into the cache (the one-trial study measures trial 0 and stops)
CUDA_VISIBLE_DEVICES=0 timeout 600 python3 benchmarks/gpu_study.py "$study" --arms curated --n-trials 1 \
  --arm-budget-s 1 --out "$out/warm" > "$out/warm.log" 2>&1
echo "baseline cached: rc $?" | tee -a "$out/rc.txt"
( arm 0 curated gpu0-curated; arm 0 no-space gpu0-no-space ) &
arm 1 every-choice gpu1-every-choice &
wait
python3 benchmarks/gpu_study.py --merge-arms "$out"/gpu0-curated/*-arms.json "$out"/gpu1-every-choice/*-arms.json \
  "$out"/gpu0-no-space/*-arms.json --out "$out/joined"
