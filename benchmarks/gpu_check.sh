#!/usr/bin/env bash
# The torch backend on a CUDA GPU, in one call (needs no AIHWKit and no internet; MNIST in data/):
#   1. speed: benchmarks/bench_backends.py for the FCN and the CNN, one run and R = 9 and 21 runs
#      batched, moment and pulse modes (AIHWKit skipped: ratios are to the one-run moment mode),
#      and benchmarks/bench_resnet.py --backend torch (the Table 2 head on the GPU);
#   2. tests/test_cuda.py (the GPU against the CPU on the same inputs);
#   3. the Figure 5 FCN grid (FP SGD; Analog SGD and TT-v1 at tau 0.7, 0.78, 0.8; seeds 0-2: 21
#      runs, 80 epochs, the paper's schedule) as three batched processes sharing the GPU, one per
#      setting (the runs of one batched model may differ only in their devices), stopped at
#      END_AT seconds after the script's start; every finished epoch is in the run folders.
# Usage: benchmarks/gpu_check.sh RESULTS_FOLDER [STAGES]   (STAGES: a comma list of bench, tests,
#        grid; default all three; env: END_AT=500 seconds, GRID_MODE=moment|pulse)
# Everything (logs, benchmark tables, the grid's run records without checkpoints) is packed into
# RESULTS_FOLDER/gpu_check.tgz, after each stage.
set -uo pipefail
cd "$(dirname "$0")/.."
dest=${1:?results folder}
stages=",${2:-bench,tests,grid},"
work=$(mktemp -d)
mkdir -p "$dest" "$work/logs"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
py=${PYTHON:-python3}
end_at=$((SECONDS + ${END_AT:-500}))
mode=${GRID_MODE:-moment}
pack() { tar -czf "$dest/gpu_check.tgz" -C "$work" --exclude checkpoint.pt --exclude model.pt \
           --exclude 'events.out.tfevents.*' .; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "CPUs: $(nproc)"
} 2>&1 | tee "$work/logs/machine.txt"

if [[ $stages == *,bench,* ]]; then
# 1. speed, alone on the GPU
for model in fcn cnn; do
  steps=$([ "$model" = fcn ] && echo 200 || echo 60)
  "$py" benchmarks/bench_backends.py --model "$model" --device cuda --no-aihwkit --runs 9 21 \
    --steps "$steps" --warmup 20 --repeats 2 --out "$work/tables" > "$work/logs/bench_$model.txt" 2>&1
  grep "^|" "$work/logs/bench_$model.txt"
done
timeout 90 "$py" benchmarks/bench_resnet.py --device cuda --backend torch \
  --settings "Analog SGD" TT-v1 --image-size 32 --steps 10 \
  --json "$work/tables/bench_resnet_torch.json" > "$work/logs/bench_resnet.txt" 2>&1
tail -n 12 "$work/logs/bench_resnet.txt"
pack
fi
if [[ $stages == *,tests,* ]]; then
# 2. the CUDA tests
"$py" -m pytest -q -p no:cacheprovider -n 4 tests/test_cuda.py > "$work/logs/test_cuda.txt" 2>&1
tail -n 25 "$work/logs/test_cuda.txt"
pack
fi
[[ $stages == *,grid,* ]] || exit 0

# 3. the grid
left=$((end_at - SECONDS))
echo "grid: $mode mode, $left s"
grid() {
  timeout -s INT "$left" "$py" S4.1-mnist-FCN.py --backend torch --update-mode "$mode" --CUDA 0 \
    --epochs 80 --data-root data --no-download --out "$work" --seed 0 1 2 "$@"
}
grid --SETTING "FP SGD" > "$work/logs/grid_fp.txt" 2>&1 &
grid --SETTING "Analog SGD" --tau 0.7 0.78 0.8 > "$work/logs/grid_asgd.txt" 2>&1 &
grid --SETTING "TT-v1" --tau 0.7 0.78 0.8 > "$work/logs/grid_tt.txt" 2>&1 &
wait
for f in "$work"/logs/grid_*.txt; do echo "$f"; grep "^epoch" "$f" | tail -n 2; done
pack
ls -la "$dest"
