#!/usr/bin/env bash
# The tiny-images preset on stand-ins and a shift it was never chosen on: round 1's stand-ins
# in <shared>/models (no headroom), files no other benchmark table uses. Zero-shot, the round-2
# preset values (base_lr 5e-5, 4 epochs) and the current preset, seed 0, through the real CLI:
#   cifar10-tinyclip       in-domain: adapt on train files [2000:2100) of each class (flat names;
#                          it was pretrained on [0:500)), score on test files [200:300)
#   cifar10-tinyclip-full  fog, severity 5, transductive on test files [200:300) of each class
#   bash benchmarks/heldout_presets.sh [SHARED] [CIFAR] [WORK]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(realpath "${1:-$root/../shared}")"
cifar="$(realpath "${2:-$root/../data/cifar10}")"
work="$(realpath -m "${3:-$root/benchmarks/_work/heldout}")"
mkdir -p "$work"
cd "$root"  # so that `benchmarks` imports as a package
python - "$work" "$cifar" "$shared" <<'PY'
import sys
from pathlib import Path
from benchmarks.common import balanced_subset, link_flat, link_labeled, materialize, model_inputs
from benchmarks.corruptions import corrupt_folder
work, cifar, shared = (Path(a) for a in sys.argv[1:4])
pool = balanced_subset(cifar / "train", 1000, skip=2000)
test = balanced_subset(cifar / "test", 1000, skip=200)
materialize(work / "pool", lambda d: link_flat(pool, d))
materialize(work / "test", lambda d: link_labeled(test, d))
materialize(work / "fog", lambda d: corrupt_folder(work / "test", d, "fog", 5, seed=0))
fog = sorted(p for p in (work / "fog").glob("*/*") if p.is_file())
materialize(work / "fog-flat", lambda d: link_flat(fog, d))
for m in ("tinyclip", "tinyclip-full"):  # prompts/cifar10-<m>/{classes,templates}.txt from its proxy_info
    model_inputs(work, "indomain", shared / "models" / f"cifar10-{m}")
PY
cd "$work"
for setting in tinyclip:pool:test tinyclip-full:fog-flat:fog; do
    IFS=: read -r m pool test <<< "$setting"
    model="local-dir:$shared/models/cifar10-$m"
    common=(--classes "prompts/cifar10-$m/classes.txt" --templates "prompts/cifar10-$m/templates.txt" --device cpu --workers 1)
    must eval "$test" --zero-shot --model "$model" "${common[@]}" --output "res-$m-zs.json" > "log-$m-zs.txt" 2>&1
    for preset in new:"" old:"--base-lr 5e-5 --epochs 4"; do
        name="${preset%%:*}"; read -r -a flags <<< "${preset#*:}"
        rm -rf "runs/$m-$name"
        must adapt "$pool" "${common[@]}" --model "$model" --preset tiny-images "${flags[@]}" --seed 0 \
            --output "runs/$m-$name" > "log-$m-$name.txt" 2>&1
        must eval "$test" --model "runs/$m-$name" --output "res-$m-$name.json" --device cpu --workers 1 >> "log-$m-$name.txt" 2>&1
    done
done
for m in tinyclip tinyclip-full; do
    python -c "import json, sys; r = {k: 100 * json.load(open(f'res-$m-{k}.json'))['top1'] for k in ('zs', 'old', 'new')}; \
print(f\"$m: zero-shot {r['zs']:.1f}, round-2 preset {r['old']:.1f} ({r['old'] - r['zs']:+.1f}), tiny-images {r['new']:.1f} ({r['new'] - r['zs']:+.1f})\")"
done
