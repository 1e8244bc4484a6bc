"""The verified gain's statistics on constructed cases: the exact identity, the interval, its corrections."""

from __future__ import annotations

import math
import random

import pytest

from must_cli.commands.verify.stats import (
    MIN_VERDICT_LABELS, VERDICT_Z, Z, Tally, estimate_gain, fpc, labels_for_margin, paired_difference, wilson,
)


def test_labeling_every_changed_image_gives_exactly_the_true_accuracy_difference():
    rng = random.Random(1)
    n, k = 1000, 10
    truth = [rng.randrange(k) for _ in range(n)]
    zero_shot = [t if rng.random() < 0.55 else rng.randrange(k) for t in truth]
    adapted = [z if rng.random() < 0.85 else (t if rng.random() < 0.5 else rng.randrange(k))
               for z, t in zip(zero_shot, truth)]
    true_gain = sum(a == t for a, t in zip(adapted, truth)) / n - sum(z == t for z, t in zip(zero_shot, truth)) / n
    changed = [i for i in range(n) if adapted[i] != zero_shot[i]]
    tally = Tally()
    for i in changed:
        tally = tally.add("adapted" if adapted[i] == truth[i] else "zero-shot" if zero_shot[i] == truth[i] else "neither")
    est = estimate_gain(tally, len(changed), n)
    assert 0 < len(changed) < n and abs(true_gain) > 0.01
    assert est.gain == pytest.approx(true_gain, abs=1e-12)
    assert est.low == pytest.approx(true_gain, abs=1e-12) and est.high == pytest.approx(true_gain, abs=1e-12)


def test_wilson_interval_matches_its_formula():
    low, high = wilson(0, 40)
    assert low == 0 and high == pytest.approx(Z * Z / 40 / (1 + Z * Z / 40))
    low, high = wilson(20, 40)
    half = Z * math.sqrt(0.25 / 40 + Z * Z / (4 * 1600)) / (1 + Z * Z / 40)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))


def test_newcombe_interval_by_hand_when_zero_shot_is_never_right():
    """b = 20 adapted right, c = 0 zero-shot right, 20 neither: phi = 0, so the interval is the Wilson ends combined."""
    theta, delta, epsilon = paired_difference(Tally(adapted=20, zero_shot=0, neither=20))
    l2, u2 = wilson(20, 40)
    _, u3 = wilson(0, 40)
    assert theta == 0.5
    assert delta == pytest.approx(math.hypot(0.5 - l2, u3))
    assert epsilon == pytest.approx(u2 - 0.5)


def test_interval_is_symmetric_in_the_two_models_and_scales_with_the_share_changed():
    a = estimate_gain(Tally(adapted=25, zero_shot=10, neither=5), changed=400, predicted=4000)
    b = estimate_gain(Tally(adapted=10, zero_shot=25, neither=5), changed=400, predicted=4000)
    assert a.gain == pytest.approx(0.1 * 15 / 40) and b.gain == pytest.approx(-a.gain)
    assert (b.low, b.high) == (pytest.approx(-a.high), pytest.approx(-a.low))
    c = estimate_gain(Tally(adapted=25, zero_shot=10, neither=5), changed=400, predicted=2000)  # d doubles
    assert c.high - c.low == pytest.approx(2 * (a.high - a.low), rel=1e-9)


def test_finite_population_correction_narrows_the_interval_to_zero():
    assert fpc(1, 1000) == pytest.approx(1.0) and fpc(40, 40) == 0.0 and fpc(20, 40) == pytest.approx(math.sqrt(20 / 39))
    t = Tally(adapted=15, zero_shot=5, neither=0)
    big = estimate_gain(t, changed=10_000, predicted=100_000)
    small = estimate_gain(t, changed=40, predicted=400)
    assert small.high - small.low == pytest.approx((big.high - big.low) * fpc(20, 40) / fpc(20, 10_000))


def test_a_sample_of_a_larger_folder_widens_the_interval():
    t = Tally(adapted=30, zero_shot=10, neither=0)
    whole = estimate_gain(t, changed=40, predicted=400)  # every changed image labeled: exact on the 400
    sampled = estimate_gain(t, changed=40, predicted=400, found=40_000)
    assert whole.low == whole.high == pytest.approx(0.05)
    assert sampled.gain == whole.gain and sampled.low < whole.low <= whole.high < sampled.high


def test_skips_are_counted_and_excluded():
    t = Tally().add("adapted").add("skip").add("zero-shot").add("skip").add("neither")
    assert (t.labels, t.skipped) == (3, 2)
    assert estimate_gain(t, changed=10, predicted=100).gain == pytest.approx(0.0)
    assert estimate_gain(Tally(skipped=4), changed=10, predicted=100).gain is None


def test_coverage_on_a_constructed_population_is_near_90_percent():
    population = ["adapted"] * 70 + ["zero-shot"] * 40 + ["neither"] * 30  # 140 changed of 1,400
    true_gain = 30 / 1400
    rng = random.Random(0)
    hits = 0
    for _ in range(1000):
        tally = Tally()
        for outcome in rng.sample(population, 40):
            tally = tally.add(outcome)
        est = estimate_gain(tally, changed=140, predicted=1400)
        hits += est.low <= true_gain <= est.high
    assert 0.85 <= hits / 1000 <= 0.97


def test_no_verdict_before_enough_answers():
    early = estimate_gain(Tally(adapted=MIN_VERDICT_LABELS - 1), changed=500, predicted=5000)
    assert early.low > 0 and early.verdict == "unknown"
    assert estimate_gain(Tally(adapted=MIN_VERDICT_LABELS), changed=500, predicted=5000).verdict == "helped"
    assert estimate_gain(Tally(zero_shot=30, neither=10), changed=500, predicted=5000).verdict == "hurt"
    assert estimate_gain(Tally(adapted=15, zero_shot=15), changed=500, predicted=5000).verdict == "unknown"
    between = estimate_gain(Tally(adapted=15, zero_shot=5), changed=500, predicted=5000)
    assert between.low > 0 and between.verdict == "unknown"  # the 90% interval excludes 0, the 99% one does not
    assert estimate_gain(Tally(adapted=15, zero_shot=5), changed=500, predicted=5000, z=VERDICT_Z).low < 0


def test_labels_for_a_two_point_interval():
    assert labels_for_margin(0.10, 100_000) == math.ceil((Z * 0.10 / 0.02) ** 2 / (1 + ((Z * 0.10 / 0.02) ** 2 - 1) / 100_000))
    assert labels_for_margin(0.10, 100_000) == 68
    assert labels_for_margin(0.10, 30) <= 30 and labels_for_margin(0.0, 0) == 0
    assert labels_for_margin(0.30, 100_000) > labels_for_margin(0.10, 100_000)
