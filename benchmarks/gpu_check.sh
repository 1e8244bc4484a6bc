#!/usr/bin/env bash
# The GPU path, checked and measured on one H100/H200 in at most 8 minutes: every step runs under
# `timeout`, and the limits add up to 480 s. Run it first whenever a GPU is lent, and record its
# summary (last lines) in docs/benchmarks.md, "Throughput and the GPU path".
#
#   benchmarks/gpu_check.sh [OUT_DIR]      # default: $OUT, else benchmarks/results/gpu
#
# 1. The suite's GPU-marked tests (pytest -m gpu): the compiled step on CUDA against eager (no
#    recompilation in epoch 2), fused AdamW against plain, and `must adapt --precision bf16` on the
#    stand-in (with CUDA's defaults: compile and fused AdamW) against fp32.
# 2. Throughput sections in priority order, each writing OUT_DIR/NAME.json (and NAME.log); a section
#    that times out leaves the others' results. Random weights only: nothing is downloaded. Needs the
#    package's dependencies importable (must_cli is taken from this tree). Inductor's compile cache
#    serves the later sections (same graphs).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 15 $py -c "import torch, open_clip, timm, typer, pydantic, pytest; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

tests_start=$SECONDS
timeout 130 $py -m pytest -m gpu -q -rs -p no:cacheprovider tests >"$out/gpu-tests.log" 2>&1
echo "gpu tests: exit $? after $((SECONDS - tests_start)) s: $(tail -n 1 "$out/gpu-tests.log")"

section() {  # NAME LIMIT_S ARGS...: one throughput.py run
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" $py -m benchmarks.throughput "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s"
}

# ViT-B/16 at batch 256: the optimised path (bf16 + fused AdamW + compile) with its losses against fp32
# on the same weights and batch, and host syncs per step; then eager fp32 on its own (an out-of-memory
# there must not cost the optimised figure).
section vitb16 95 --model ViT-B-16 --device cuda --batch-sizes 256 --paths optimised --steps 10 --warmup 3 --skip-data
section vitb16-eager 25 --model ViT-B-16 --device cuda --batch-sizes 256 --paths eager --steps 5 --warmup 2 --skip-data
# ViT-L/14, optimised, batch 128.
section vitl14 85 --model ViT-L-14 --device cuda --batch-sizes 128 --paths optimised --steps 8 --warmup 3 --skip-data

# End to end: `must adapt` on 2048 ImageNet-sized JPEGs with a random ViT-B/16 (local-dir), 1000
# classes, batch 256, 2 epochs; metrics.jsonl's img/s of epoch 2 against the step rate of `vitb16`.
e2e_start=$SECONDS
timeout 20 $py - "$out" >"$out/e2e-setup.log" 2>&1 <<'EOF'
import json, shutil, sys
from pathlib import Path
import open_clip
from safetensors.torch import save_file
from benchmarks.throughput import photo
root = Path(sys.argv[1]) / "e2e"
shutil.rmtree(root, ignore_errors=True)
model_dir, images = root / "vit-b-16-random", root / "images"
model_dir.mkdir(parents=True); images.mkdir()
cfg = open_clip.get_model_config("ViT-B-16")
clip = open_clip.create_model("ViT-B-16", pretrained=None)
save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(model_dir / "open_clip_model.safetensors"))
pre = {"size": 224, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
       "interpolation": "bicubic", "resize_mode": "shortest"}
(model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
photo(500, 375).save(images / "0000.jpg", quality=90)
for i in range(1, 2048):
    shutil.copyfile(images / "0000.jpg", images / f"{i:04d}.jpg")
(root / "classes.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
(root / "templates.txt").write_text("a photo of a {}.\n")
EOF
timeout 70 $py -m must_cli adapt "$out/e2e/images" --classes "$out/e2e/classes.txt" \
    --templates "$out/e2e/templates.txt" --model "local-dir:$out/e2e/vit-b-16-random" --device cuda \
    --epochs 2 --batch-size 256 --no-guard --output "$out/e2e/run" >"$out/e2e.log" 2>&1
echo "e2e: exit $? after $((SECONDS - e2e_start)) s"
cp "$out/e2e/run/metrics.jsonl" "$out/e2e-metrics.jsonl" 2>/dev/null
cp "$out/e2e/run/run-record.json" "$out/e2e-run-record.json" 2>/dev/null
rm -rf "$out/e2e"

# ViT-L/14 peak memory at batch 64 and 128 with gradient checkpointing (bf16, fused AdamW, eager).
section vitl14-memory-gc 25 --model ViT-L-14 --device cuda --batch-sizes 64 128 --paths optimised \
    --compile off --grad-checkpointing --steps 2 --warmup 1 --skip-data

timeout 5 $py - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    if f.stem == "e2e-run-record":
        print(f"e2e runtime: {json.loads(f.read_text()).get('runtime')}")
        continue
    r = json.loads(f.read_text())
    for s in r.get("steps", []):
        print(f"{f.stem:18s} {s['path']:9s} b{s['batch']:<4d} gc={s['grad_checkpointing']!s:5s} "
              f"{s['img_per_s']:8.1f} img/s  peak {s['peak_mem_mb'] / 1024:6.1f} GiB  syncs/step {s.get('host_syncs_per_step')}"
              f"  adamw {s['adamw']} compile {s['compile']}"
              + (f"  losses within bf16 tolerance: {s['loss_check']['within_tolerance']}" if "loss_check" in s else ""))
metrics = out / "e2e-metrics.jsonl"
if metrics.exists():
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "images_per_second" in r:
            print(f"e2e epoch {r['epoch']}: {r['images_per_second']} img/s ({r['seconds']} s)")
EOF
