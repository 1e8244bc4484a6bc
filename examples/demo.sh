#!/usr/bin/env bash
# The offline demo: install must-cli if needed, then zero-shot -> adapt -> eval -> predict -> export
# on the stand-in CLIP of benchmarks/models/cifar10-standin (examples/demo-model links to it): no
# network, no GPU, a few minutes on a laptop CPU. The last line compares zero-shot and adapted top-1.
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
mkdir -p "$out"

echo "== 1. zero-shot accuracy of the stand-in CLIP (before) =="
must eval examples/eval --zero-shot --model "$model" "${common[@]}" --output "$out/zero-shot.json"

echo "== 2. adapt to the 1,000 unlabeled photos with MUST =="
must adapt examples/photos "${common[@]}" --model "$model" --preset tiny-images --output "$out"

echo "== 3. accuracy of the adapted model (after) =="
must eval examples/eval --model "$out" --output "$out/adapted.json"

echo "== 4. predict: labels for the photos, as CSV =="
must predict examples/photos --model "$out" --output "$out/predictions.csv"

echo "== 5. export a verified ONNX model =="
must export --model "$out" --format onnx

python - "$out/zero-shot.json" "$out/adapted.json" <<'PY'
import json, sys
before, after = (json.load(open(f))["top1"] for f in sys.argv[1:])
print(f"zero-shot top-1 {100 * before:.1f}% -> adapted top-1 {100 * after:.1f}%")
PY
