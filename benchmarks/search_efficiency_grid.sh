#!/usr/bin/env bash
# Measures the grid of benchmarks/search_efficiency.py on a dedicated many-core CPU: N shards at
# once, each pinned to its own 2 cores (the study file's target.threads = 2), then merged into
# $OUT/grid.csv + grid.json (default OUT: benchmarks/results/search-efficiency).
# On the lent GPU machine (no network; its 16 CPU cores are what is measured): build the wheels
# here, `bash ../shared/tools/gpu-wheels.sh && pip wheel --no-deps -w .whl .`, carry .whl, then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site bash benchmarks/search_efficiency_grid.sh
set -euo pipefail
out=${OUT:-benchmarks/results/search-efficiency}
shards=${SHARDS:-7}
mkdir -p "$out"
export SLIMTUNE_CACHE=${SLIMTUNE_CACHE:-/tmp/slimtune-cache}
{ nproc; lscpu; } > "$out/cpu.txt" 2>&1
# Train (or find) the baseline once, before the shards start, so they share it.
python3 -W ignore -c "
import torch
from slimtune.objectives import TrainingRecipe, get_baseline, load_workload
from slimtune.search.config import load_config
c = load_config('studies/digits.toml')
torch.set_num_threads(c.target.threads)
w = load_workload(c.workload.model, c.workload.data, tuple(c.workload.input_shape))
b = get_baseline(w, torch.device('cpu'), recipe=TrainingRecipe(c.baseline.epochs, c.baseline.batch_size, c.baseline.lr, c.study.seed))
print('baseline:', b.source, b.train_seconds)
"
for i in $(seq 0 $((shards - 1))); do
  taskset -c $((2 * i)),$((2 * i + 1)) python3 benchmarks/search_efficiency.py measure --results "$out" --shard "$i/$shards" \
    > "$out/shard$i.log" 2>&1 &
done
wait
tail -n 1 "$out"/shard*.log
python3 benchmarks/search_efficiency.py merge --results "$out"
