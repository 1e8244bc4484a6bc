#!/usr/bin/env bash
# The offline demo: install must-cli if needed, then zero-shot -> adapt -> eval -> predict -> export
# on the small CLIP stand-in shipped in examples/ (no network, no GPU; a few minutes on a laptop CPU).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
if ! command -v must >/dev/null 2>&1; then
    echo "installing must-cli from $root ..."
    python -m pip install -q -e "$root[export]"
fi
model="local-dir:examples/demo-model"
common=(--classes examples/classes.txt --templates examples/templates.txt)
out="${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}"

echo "== 1. zero-shot accuracy of the stand-in CLIP (before) =="
must eval examples/eval --zero-shot --model "$model" "${common[@]}"

echo "== 2. adapt to the 300 unlabeled photos with MUST =="
must adapt examples/photos "${common[@]}" --model "$model" --preset tiny-images \
    --eval-dir examples/eval --output "$out"

echo "== 3. accuracy of the adapted model (after) =="
must eval examples/eval --model "$out"

echo "== 4. predict: labels for the photos, as CSV =="
must predict examples/photos --model "$out" --output "$out/predictions.csv"

echo "== 5. export a verified ONNX model =="
must export --model "$out" --format onnx
