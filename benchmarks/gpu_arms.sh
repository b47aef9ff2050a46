#!/usr/bin/env bash
# The target screen's arms (issue 22), each with the same wall budget:
#   bash benchmarks/gpu_arms.sh studies/resnet18-b256.toml [ARM_BUDGET_S] [ARMS] [SCREEN_BUDGET_S]
# ARMS defaults to curated,every-choice,no-space; the broad arms' screen budget to 60 s. First the baseline is trained and cached once
# (two arms training it at the same time took 97 s each on an H200 pair and the first arms ran
# past the call's limit). On two GPUs or more the first arm runs on GPU 0 beside the second on
# GPU 1, then the third on GPU 0; on one GPU the arms run one after another. --merge-arms then
# joins the runs. Results under $OUT/arms (default /tmp/arms): the joined .md/.json, each run's
# folder and log.
set -u
study=$1
budget=${2:-150}
IFS=, read -r -a arms <<< "${3:-curated,every-choice,no-space}"
screen=${4:-60}
out=${OUT:-/tmp}/arms
mkdir -p "$out"
export SLIMTUNE_CACHE=${SLIMTUNE_CACHE:-/tmp/slimtune-cache} PYTHONUNBUFFERED=1
args="--arm-budget-s $budget --screen-budget-s $screen --setting-timeout-s 60"
limit=$(( budget * 2 + 120 ))  # a safety net only: each arm ends within its budget (run_study's bound)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
arm() {  # gpu arm folder
  CUDA_VISIBLE_DEVICES=$1 timeout $limit python3 benchmarks/gpu_study.py "$study" --arms "$2" $args \
    --out "$out/$3" > "$out/$3.log" 2>&1
  echo "$2 on GPU $1: rc $?" | tee -a "$out/rc.txt"
}
# the baseline: trained once into the cache (the one-trial study measures trial 0 and stops; its
# budget is a bound on the whole arm, training included, so it is the most the step may take)
CUDA_VISIBLE_DEVICES=0 timeout 600 python3 benchmarks/gpu_study.py "$study" --arms curated --n-trials 1 \
  --arm-budget-s 570 --out "$out/warm" > "$out/warm.log" 2>&1
echo "baseline cached: rc $?" | tee -a "$out/rc.txt"
if (( gpus >= 2 && ${#arms[@]} >= 2 )); then
  ( arm 0 "${arms[0]}" "gpu0-${arms[0]}"; for a in "${arms[@]:2}"; do arm 0 "$a" "gpu0-$a"; done ) &
  arm 1 "${arms[1]}" "gpu1-${arms[1]}" &
  wait
else
  for a in "${arms[@]}"; do arm 0 "$a" "gpu0-$a"; done
fi
python3 benchmarks/gpu_study.py --merge-arms "$out"/gpu*/*-arms.json --out "$out/joined"
