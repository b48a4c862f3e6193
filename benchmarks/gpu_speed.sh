#!/usr/bin/env bash
# Issue #5's GPU row, as one prepared script for the `device` tool (< 10 minutes on one GPU):
# images/s of (a) a bare loop, (b) the loop with per-sample recording, (c) `memscan run`, resnet18 at 32 px on
# CIFAR-10-sized data (the real CIFAR-10 images when ../shared/data is there, synthetic otherwise).
#   run: bash benchmarks/gpu_speed.sh            results: $OUT/*.json (or ./bench-out/gpu-*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"; mkdir -p "$OUT"
PY="${PY:-python}"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu-device.txt" || true
for prec in bf16 fp16; do
  timeout 240 $PY benchmarks/overhead.py --model resnet18 --per-class 5000 --epochs 3 --batch-size 512 \
      --device cuda --precision $prec --run > "$OUT/gpu-resnet18-$prec.json" 2> "$OUT/gpu-resnet18-$prec.err" || true
done
timeout 120 $PY benchmarks/overhead.py --model memscan-cnn --per-class 5000 --epochs 3 --batch-size 512 \
    --device cuda --precision bf16 --run > "$OUT/gpu-memscan-cnn-bf16.json" 2> "$OUT/gpu-memscan-cnn-bf16.err" || true
tail -n 20 "$OUT"/gpu-*.json
