#!/usr/bin/env bash
# GPU check of the Table 2 fine-tuning, on a machine with a CUDA GPU and this repository's
# requirements installed (pip: the backbone on the GPU, the analog head on the CPU; conda's
# aihwkit-gpu: both on the GPU). Needs no internet. About 2 minutes:
#   1. benchmarks/bench_resnet.py on the GPU: images/s at 224 px, batch 128, with and without bf16
#      autocast, the analog head's share of the step, the data pipeline's images/s;
#   2. a 20-step smoke run of A12-resnet-finetune.py (ResNet18, TT-v1, random init, synthetic
#      CIFAR-10 of 2,560 training images, i.e. 20 batches of 128) on GPU 0, resumed for a second
#      epoch, then A12-table.py over it;
#   3. the torch backend (plain PyTorch, analog tiles on the GPU): benchmarks/bench_resnet.py with
#      --backend torch, benchmarks/bench_backends.py for the FCN and the CNN (one run and 9 and 27
#      runs batched; tables written to the results folder), and a 1-epoch A12 smoke run with the
#      head on the GPU.
# Usage: benchmarks/gpu_check.sh [results folder] (default: a new temporary folder).
# A dry run of the same steps on a CPU: CUDA_IDX=-1 IMAGE_SIZE=32 THREADS=1 WORKERS=0 benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-$(mktemp -d)}
mkdir -p "$dest"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
cuda=${CUDA_IDX:-0} size=${IMAGE_SIZE:-224} threads=${THREADS:-4} workers=${WORKERS:-8}
device=$([ "$cuda" -ge 0 ] && echo cuda || echo cpu)
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$py" -c "import torch, aihwkit; from aihwkit.simulator.rpu_base import cuda; print('torch', torch.__version__, 'aihwkit', aihwkit.__version__, 'aihwkit CUDA:', cuda.is_compiled())"
"$py" benchmarks/bench_resnet.py --device "$device" --image-size "$size" --threads "$threads" \
  --workers "$workers" --loader --json "$dest/bench_resnet.json" 2>&1 | tee "$dest/bench_resnet.txt"
"$py" -c "from utils.data import write_synthetic_cifar10; write_synthetic_cifar10('$work/cifar', 2560, 512)"
flags=(--model Resnet18 -FFT --optimizer TT-v1 --tau 0.8 --CUDA "$cuda" --weights none --no-download
       --data-root "$work/cifar" --out "$work/out" --workers "$workers" --threads "$threads"
       --image-size "$size")
{
  "$py" A12-resnet-finetune.py "${flags[@]}" --epochs 1
  "$py" A12-resnet-finetune.py "${flags[@]}" --epochs 2
  "$py" A12-table.py --runs "$work/out" --out "$work/out"
} 2>&1 | tee "$dest/smoke_run.txt"
run="$work/out/runs/CIFAR10-finetune/Resnet18-scratch/FFT/TT-v1-tau=0.8/seed0"
cp "$run/metrics.jsonl" "$run/config.json" "$dest/"
"$py" - "$dest/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
assert [r["epoch"] for r in rows] == [0, 1, 2], rows
assert rows[2]["train_loss"] < rows[1]["train_loss"], "the training loss did not fall"
print("smoke run OK:", [(r["epoch"], r["train_loss"], r["test_acc"]) for r in rows])
PY
# 3. the torch backend on the GPU
"$py" benchmarks/bench_resnet.py --device "$device" --image-size "$size" --threads "$threads" \
  --backend torch --settings "Analog SGD" TT-v1 --json "$dest/bench_resnet_torch.json" \
  2>&1 | tee "$dest/bench_resnet_torch.txt"
for model in fcn cnn; do
  for runs in 9 27; do
    "$py" benchmarks/bench_backends.py --model "$model" --device "$device" --no-aihwkit \
      --runs "$runs" --steps 100 --repeats 2 --threads "$threads" --out "$dest" \
      2>&1 | tee "$dest/bench_backends_${model}_${runs}.txt"
    mv "$dest/bench_backends_${model}_${device}.md" "$dest/bench_backends_${model}_${device}_R${runs}.md"
  done
done
"$py" A12-resnet-finetune.py "${flags[@]}" --backend torch --epochs 1 2>&1 | tee "$dest/smoke_run_torch.txt"
rm -rf "$work"
echo "results in $dest"
