#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md "Throughput": 6-8 minutes on one H100/H200 (each section
# capped; all caps together 9.7 minutes).
#
#   benchmarks/gpu_check.sh [OUT_DIR]      # default: $OUT, else benchmarks/results/gpu
#
# Sections run in priority order, each under its own time limit, each writing OUT_DIR/NAME.json
# (and NAME.log); a section that times out leaves the others' results. Random weights only:
# nothing is downloaded. Needs the package's dependencies importable (must_cli is taken from
# this tree). Compilation is cached by inductor across sections (same graphs).
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$out"
py=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import torch, open_clip, timm, typer, pydantic; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

section() {  # NAME LIMIT_S ARGS...: one throughput.py run
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" $py -m benchmarks.throughput "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
    echo "$name: exit $? after $((SECONDS - start)) s"
}

# 1. ViT-B/16: eager fp32 at 64 and 256, the optimised path (bf16 + fused AdamW + compile) at 256;
#    its losses vs fp32 on the same weights and batch, and host syncs per step.
section vitb16-eager 60 --model ViT-B-16 --device cuda --batch-sizes 64 256 --paths eager --steps 5 --warmup 2 --skip-data
section vitb16 120 --model ViT-B-16 --device cuda --batch-sizes 256 --paths optimised --steps 20 --warmup 3 --skip-data
# 2. ViT-L/14, optimised, batch 128.
section vitl14 110 --model ViT-L-14 --device cuda --batch-sizes 128 --paths optimised --steps 10 --warmup 3 --skip-data

# 3. End to end: `must adapt` on 4096 ImageNet-sized JPEGs with a random ViT-B/16 (local-dir),
#    1000 classes, batch 256; metrics.jsonl's img/s of epochs 2-3 against the step rate of section 1.
e2e_start=$SECONDS
timeout 45 $py - "$out" >"$out/e2e-setup.log" 2>&1 <<'EOF'
import json, shutil, sys
from pathlib import Path
import open_clip, torch
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
for i in range(1, 4096):
    shutil.copyfile(images / "0000.jpg", images / f"{i:04d}.jpg")
(root / "classes.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
(root / "templates.txt").write_text("a photo of a {}.\n")
EOF
timeout 120 $py -m must_cli adapt "$out/e2e/images" --classes "$out/e2e/classes.txt" \
    --templates "$out/e2e/templates.txt" --model "local-dir:$out/e2e/vit-b-16-random" --device cuda \
    --epochs 3 --batch-size 256 --no-guard --output "$out/e2e/run" >"$out/e2e.log" 2>&1
echo "e2e: exit $? after $((SECONDS - e2e_start)) s"
cp "$out/e2e/run/metrics.jsonl" "$out/e2e-metrics.jsonl" 2>/dev/null
rm -rf "$out/e2e"

# 4. Data pipeline on all cores: ImageNet-sized vs 12-megapixel JPEGs, without and with the cache.
section data 60 --skip-steps --data-sizes 500x375 4000x3000 --data-images 512 --data-batch 16
# 5. ViT-L/14 peak memory per batch size, with and without gradient checkpointing (bf16, fused, eager).
section vitl14-memory-gc 45 --model ViT-L-14 --device cuda --batch-sizes 32 64 128 --paths optimised \
    --no-compile --grad-checkpointing --steps 2 --warmup 1 --skip-data
section vitl14-memory 30 --model ViT-L-14 --device cuda --batch-sizes 32 64 --paths optimised \
    --no-compile --steps 2 --warmup 1 --skip-data

$py - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    for s in r.get("steps", []):
        print(f"{f.stem:18s} {s['path']:9s} b{s['batch']:<4d} gc={s['grad_checkpointing']!s:5s} "
              f"{s['img_per_s']:8.1f} img/s  peak {s['peak_mem_mb'] / 1024:6.1f} GiB  syncs/step {s.get('host_syncs_per_step')}"
              + (f"  losses within bf16 tolerance: {s['loss_check']['within_tolerance']}" if "loss_check" in s else ""))
    for d in r.get("data", []):
        print(f"{f.stem:18s} {d['size']:9s} uncached {d['uncached_img_per_s']} img/s, cache epoch 1 "
              f"{d['cache_epoch1_img_per_s']}, epoch 2 {d['cache_epoch2_img_per_s']} ({d['workers']} workers)")
metrics = out / "e2e-metrics.jsonl"
if metrics.exists():
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "images_per_second" in r:
            print(f"e2e epoch {r['epoch']}: {r['images_per_second']} img/s ({r['seconds']} s)")
EOF
