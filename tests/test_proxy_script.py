"""benchmarks/proxy.py without /work/shared: arguments, run plan, evaluation files, aggregation, targets, markdown."""

from __future__ import annotations

import pytest

from benchmarks import common, proxy


def test_defaults_and_sizes():
    args = proxy.parse_args([])
    assert args.settings == ["indomain", "shift"] and args.seeds == [0, 1, 2] and args.preset == "tiny-images"
    assert args.size == "full" and args.json.name == "proxy-full.json"
    assert proxy.sizes_of(args) == {"pool": None, "test": None, "shift": None}
    assert common.device_args(args.device) == ["--device", "cpu", "--workers", "1"]
    quick = proxy.parse_args(["--quick", "--epochs", "2", "--adapt-args", "--lr 1e-4 --no-guard"])
    assert quick.json.name == "proxy-quick.json" and proxy.sizes_of(quick)["pool"] == 1000
    val = proxy.parse_args(["--quick", "--validation"])
    assert val.size == "quick-validation" and val.json.name == "proxy-quick-validation.json"
    assert proxy.hyper_args(quick) == ["--preset", "tiny-images", "--lr", "1e-4", "--no-guard", "--epochs", "2"]
    small = proxy.parse_args(["--limit", "200", "--quick", "--preset", "", "--device", "cuda"])
    assert small.size == "limit200" and set(proxy.sizes_of(small).values()) == {200}
    assert proxy.hyper_args(small) == [] and common.device_args(small.device) == ["--device", "cuda"]
    with pytest.raises(SystemExit):
        proxy.parse_args(["--variants", "nope"])


def test_plan_runs_zero_shot_once_then_seed_by_seed():
    args = proxy.parse_args(["--corruptions", "contrast", "pixelate", "--variants", "zero-shot", "must", "st",
                             "--seeds", "0", "1"])
    jobs = proxy.plan(args)
    assert [str(j.folder()) for j in jobs[:3]] == [
        "indomain/clean/zero-shot", "shift/contrast/zero-shot", "shift/pixelate/zero-shot"]
    assert len(jobs) == 3 + 2 * 3 * 2
    assert [j.seed for j in jobs[3:]] == [0] * 6 + [1] * 6
    assert str(jobs[3].folder()) == "indomain/clean/must/seed0"


def test_validation_images_are_the_stand_ins_unseen_train_files(tmp_path, monkeypatch):
    for split, n in (("train", 12), ("test", 4)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / c / f"{i:04d}.jpg").write_bytes(b"x")
    monkeypatch.setattr(proxy, "proxy_info", lambda setting: {"pool_files": [4, 8], "val_files": [8, 11]})
    val = proxy.eval_files(tmp_path, proxy.parse_args(["--validation"]), "indomain", None)
    assert [f"{f.parent.name}/{f.name}" for f in val] == [f"{c}/{i:04d}.jpg" for c in ("cat", "dog") for i in (8, 9, 10)]
    test = proxy.eval_files(tmp_path, proxy.parse_args([]), "indomain", 4)
    assert {f.parent.parent.name for f in test} == {"test"} and len(test) == 4


ACC = {  # setting/corruption -> variant -> top-1 per seed (zero-shot: one run)
    ("indomain", None): {"zero-shot": [0.50], "st": [0.52, 0.54, 0.56], "st_mim": [0.55, 0.55, 0.55],
                         "must": [0.56, 0.57, 0.58], "st_nofair": [0.50, 0.51, 0.52]},
    ("shift", "contrast"): {"zero-shot": [0.20], "st": [0.25] * 3, "st_mim": [0.27] * 3, "must": [0.30] * 3,
                            "st_nofair": [0.26] * 3},
    ("shift", "pixelate"): {"zero-shot": [0.60], "st": [0.60] * 3, "st_mim": [0.61] * 3, "must": [0.58] * 3,
                            "st_nofair": [0.62] * 3},
}


def fake_records() -> list[dict]:
    return [
        {"setting": s, "corruption": c, "variant": v, "seed": None if v == "zero-shot" else seed,
         "top1": acc, "mean_per_class": acc - 0.01, "seconds": {"eval": 1.0}}
        for (s, c), variants in ACC.items() for v, accs in variants.items() for seed, acc in enumerate(accs)
    ]


def test_aggregate_means_stds_deltas_and_shift_mean():
    rows = proxy.aggregate(fake_records(), list(proxy.VARIANT_FLAGS))
    by = {(r["setting"], r["corruption"]): r["variants"] for r in rows}
    assert list(by) == [("indomain", None), ("shift", "contrast"), ("shift", "pixelate"), ("shift", "mean")]
    st = by["indomain", None]["st"]
    assert st["top1"] == pytest.approx(0.54) and st["top1_std"] == pytest.approx(0.02)
    assert st["delta_top1"] == pytest.approx(0.04) and st["seeds"] == [0, 1, 2]
    assert by["indomain", None]["zero-shot"]["top1_std"] == 0.0
    mean = by["shift", "mean"]
    assert mean["zero-shot"]["top1"] == pytest.approx(0.40) and mean["must"]["top1"] == pytest.approx(0.44)
    assert mean["must"]["delta_top1"] == pytest.approx(0.04)
    assert mean["must"]["mean_per_class"] == pytest.approx(0.43)


def test_targets_and_markdown():
    rows = proxy.aggregate(fake_records(), list(proxy.VARIANT_FLAGS))
    targets = {t["target"]: t for t in proxy.check_targets(rows)}
    below = targets["MUST no more than 1 point below zero-shot anywhere"]
    assert below["holds"] is False and "pixelate -2.0" in below["detail"]
    assert targets["shift: MUST >= zero-shot + 5"]["holds"] is False
    indomain = targets["in-domain: MUST >= zero-shot + 3"]
    assert indomain["holds"] is True and indomain["detail"] == "57.0 vs 50.0 (+7.0)"
    assert targets["in-domain: ZS < ST < ST+MIM <= MUST"]["holds"] is True
    assert targets["in-domain: fairness helps (ST > ST w/o fairness)"]["holds"] is True
    assert targets["shift: fairness helps (ST > ST w/o fairness)"]["holds"] is False

    md = proxy.markdown(rows, list(targets.values()), list(proxy.VARIANT_FLAGS), "test")
    assert "| setting | zero-shot | ST | ST+MIM | MUST | ST w/o fairness |" in md
    assert "| in-domain (clean test) | 50.0 | 54.0 ± 2.0 | 55.0 ± 0.0 | 57.0 ± 1.0 | 51.0 ± 1.0 |" in md
    assert "| shift: mean over corruptions | 40.0 |" in md and "Mean per-class accuracy" in md
    assert "- shift: MUST >= zero-shot + 5: **fails** (44.0 vs 40.0 (+4.0))" in md


def test_targets_not_measured_without_runs():
    rows = proxy.aggregate([r for r in fake_records() if r["variant"] in ("zero-shot", "must")], ["zero-shot", "must"])
    targets = proxy.check_targets(rows)
    assert {t["target"]: t["holds"] for t in targets}["in-domain: ZS < ST < ST+MIM <= MUST"] is None
    md = proxy.markdown(rows, targets, ["zero-shot", "must"], "test")
    assert "| setting | zero-shot | MUST |" in md and "not measured" in md


def test_run_tag_follows_the_preset_values(monkeypatch):
    args = proxy.parse_args(["--quick"])
    before = proxy.run_tag(args)
    assert proxy.run_tag(proxy.parse_args(["--quick"])) == before  # stable
    assert proxy.run_tag(proxy.parse_args(["--quick", "--epochs", "3"])) != before
    monkeypatch.setattr(proxy, "load_preset", lambda name: {"base_lr": 1.0, "epochs": 8})
    assert proxy.run_tag(args) != before  # an edited preset gets a fresh runs folder
