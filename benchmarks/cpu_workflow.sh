#!/usr/bin/env bash
# adapt (1 epoch) -> predict -> export on a few hundred real CIFAR-10 JPEGs with the proxy CLIP, timed.
# Usage: benchmarks/cpu_workflow.sh [SHARED_DIR] [WORK_DIR]   (defaults ../shared, benchmarks/_work/workflow)
# Prints each command's own summary (time, images/s, ONNX parity); docs/benchmarks.md records one run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(cd "${1:-$root/../shared}" && pwd)"
work="${2:-$root/benchmarks/_work/workflow}"
rm -rf "$work"
mkdir -p "$work/images"
tar xzf "$shared/data/cifar10-jpeg.tar.gz" -C "$work"
# 300 unlabeled images: train files 500-529 of each class (never seen by the proxy), neutral names
i=0
for cls in "$work"/cifar10/train/*/; do
    for f in $(ls "$cls" | sort | sed -n '501,530p'); do
        cp "$cls/$f" "$work/images/$(printf 'img_%04d.jpg' $i)"; i=$((i + 1))
    done
done
model="local-dir:$shared/models/cifar10-tinyclip"
python - "$shared" > "$work/classes.txt" <<'PY'
import json, sys
print("\n".join(json.load(open(f"{sys.argv[1]}/models/cifar10-tinyclip/open_clip_config.json"))["proxy_info"]["classes"]))
PY
echo "== must adapt: $i images, 1 epoch, CPU =="
/usr/bin/time -f "adapt wall %e s, max RSS %M KB" \
    must adapt "$work/images" --classes "$work/classes.txt" --model "$model" --preset tiny-images \
    --epochs 1 --device cpu --output "$work/run"
echo "== must predict: the same images =="
must predict "$work/images" --model "$work/run" --device cpu --output "$work/predictions.csv"
echo "== must export --format onnx (verified against PyTorch) =="
must export --model "$work/run" --format onnx
echo "== must export --format torchscript =="
must export --model "$work/run" --format torchscript
