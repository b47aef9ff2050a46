#!/usr/bin/env bash
# Runs studies/digits-cuda.toml on a CUDA machine and writes what it found under $OUT
# (default benchmarks/results/gpu): the front, every trial, the log and the figure's HTML.
# On the lent GPU machine (no network): build the wheels first, here,
#   bash ../shared/tools/gpu-wheels.sh && pip wheel --no-deps -w .whl .
# then run, carrying .whl:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     export PYTHONPATH=/tmp/site && bash benchmarks/gpu_study.sh
set -euo pipefail
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
export SLIMTUNE_CACHE=${SLIMTUNE_CACHE:-/tmp/slimtune-cache}
db="sqlite:////tmp/slimtune-gpu.db"
rm -f /tmp/slimtune-gpu.db
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" || true
python3 -c "import torch, torchao; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchao', torchao.__version__)" >> "$out/gpu.txt"
start=$(date +%s)
python3 -m slimtune.search.cli run studies/digits-cuda.toml --storage "$db" --no-progress 2>&1 | tee "$out/run.log"
echo "wall time: $(( $(date +%s) - start )) s" | tee -a "$out/run.log"
python3 -m slimtune.search.cli pareto digits-cnn-cuda --storage "$db" --format csv > "$out/pareto.csv"
python3 -m slimtune.search.cli trials digits-cnn-cuda --storage "$db" --format csv > "$out/trials.csv"
python3 -m slimtune.search.cli plot digits-cnn-cuda --storage "$db" --out "$out/pareto.html"
