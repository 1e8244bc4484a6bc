"""The gain of adaptation from a few labels on the images whose label it changed.

Two classifiers differ in accuracy only where their labels differ. If the adapted model changed
the label of a share ``d`` of the n predicted images (exact: no labels needed), then

    gain = d x (P(adapted right | changed) - P(zero-shot right | changed))

and only changed images need labels. Each labeled changed image scores +1 (the adapted label is
right), -1 (the zero-shot label is right) or 0 (neither); both cannot be right, the labels differ.

Interval: Newcombe's method 10 for a difference of paired proportions (Newcombe 1998, "Improved
confidence intervals for the difference between binomial proportions based on paired data"),
which combines the Wilson intervals of P(adapted right) and P(zero-shot right) with their
correlation, so it stays sensible at 10 labels and at all-agreeing answers. Its half-widths are
multiplied by the finite-population correction sqrt((M - m) / (M - 1)) for m labels out of M
changed images, so labeling every changed image gives the exact difference with zero width.
Assumptions: the labeled images are a uniform random draw without replacement from the changed
set (the page draws them so), skipped images are missing at random, the labels are right. When
the n predicted images are an even sample of a larger folder of N, the sample-to-folder error
is added in quadrature. docs/method.md gives the details and benchmarks/verify_check.py checks
the coverage. Pure Python, no numpy: imported by the verify page on every answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.90
Z = 1.6448536269514722  # the two-sided 90% normal quantile
PLANNING_VARIANCE = 1.0  # worst case of a {-1, 0, +1} score's variance: label counts never promised too low
TARGET_MARGIN = 0.02  # the +-2 points `must adapt` says how many labels buy
# The page shows the 90% interval after every answer, and a user who stops at the first one that excludes 0
# would be wrong far more often than 1 time in 20. So the words "helped" / "hurt" wait for at least
# MIN_VERDICT_LABELS answers and for the 99% interval to exclude 0 (benchmarks/verify_check.py measures the
# first such verdict: right in 98-100% of labeling orders on every run, against 84-100% for the 90% interval).
MIN_VERDICT_LABELS = 20
VERDICT_Z = 2.5758293035489004  # the two-sided 99% normal quantile


@dataclass(frozen=True)
class Tally:
    """Answers on labeled changed images: adapted right, zero-shot right, neither right, skipped."""

    adapted: int = 0
    zero_shot: int = 0
    neither: int = 0
    skipped: int = 0

    @property
    def labels(self) -> int:
        """Answers that count (skips excluded)."""
        return self.adapted + self.zero_shot + self.neither

    def add(self, outcome: str) -> "Tally":
        """One more answer: 'adapted', 'zero-shot', 'neither' or 'skip'."""
        field = {"adapted": "adapted", "zero-shot": "zero_shot", "neither": "neither", "skip": "skipped"}[outcome]
        return Tally(**{**self.__dict__, field: getattr(self, field) + 1})


@dataclass(frozen=True)
class GainEstimate:
    """The verified gain (a difference of shares, 1 = 100 points) and its 90% interval; None bounds: no labels yet."""

    gain: float | None
    low: float | None
    high: float | None
    tally: Tally
    changed: int  # M: images whose label changed, among the predicted ones
    predicted: int  # n: images both models labeled
    found: int  # N: images in the folder (>= n)
    verdict: str = "unknown"  # "helped" / "hurt": see VERDICT_Z; "unknown" until then

    @property
    def share_changed(self) -> float:
        return self.changed / self.predicted if self.predicted else 0.0


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(t: Tally, z: float = Z) -> tuple[float, float, float]:
    """(theta, delta, epsilon): P(adapted right) - P(zero-shot right) on the labeled changed images and the
    distances below and above it of Newcombe's method-10 interval."""
    m, b, c, d = t.labels, t.adapted, t.zero_shot, t.neither  # the 2x2 cell "both right" is 0 on changed images
    theta = (b - c) / m
    p1, p2 = b / m, c / m
    l2, u2 = wilson(b, m, z)
    l3, u3 = wilson(c, m, z)
    denom = (b + 0) * (c + d) * (0 + c) * (b + d)
    phi = (0 * d - b * c) / math.sqrt(denom) if denom > 0 else 0.0
    delta = math.sqrt(max(0.0, (p1 - l2) ** 2 - 2 * phi * (p1 - l2) * (u3 - p2) + (u3 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u2 - p1) ** 2 - 2 * phi * (u2 - p1) * (p2 - l3) + (p2 - l3) ** 2))
    return theta, delta, epsilon


def fpc(labels: int, population: int) -> float:
    """Finite-population correction of a draw without replacement: 0 once every image is labeled."""
    if population <= 1:
        return 0.0
    return math.sqrt(max(0.0, (population - labels) / (population - 1)))


def _bounds(tally: Tally, changed: int, predicted: int, found: int, z: float) -> tuple[float, float, float]:
    """(gain, low, high) at the normal quantile ``z`` (see the module docstring)."""
    d = changed / predicted
    theta, delta, epsilon = paired_difference(tally, z)
    f = fpc(tally.labels, changed)
    gain, below, above = d * theta, d * delta * f, d * epsilon * f
    if found > predicted:  # the predicted images are an even sample of the folder: its own error, in quadrature
        moved = d * (tally.adapted + tally.zero_shot) / tally.labels  # share of images whose score is +-1
        sample = z * math.sqrt(max(0.0, moved - gain * gain) / predicted * (1 - predicted / found))
        below, above = math.hypot(below, sample), math.hypot(above, sample)
    return gain, gain - below, gain + above


def estimate_gain(tally: Tally, changed: int, predicted: int, found: int | None = None, z: float = Z) -> GainEstimate:
    """The gain over the folder from answers on ``tally.labels`` changed images, its interval, and the verdict."""
    found = max(found or predicted, predicted)
    if tally.labels == 0 or predicted == 0:
        return GainEstimate(None, None, None, tally, changed, predicted, found)
    if tally.labels > changed:
        raise ValueError(f"{tally.labels} labels for {changed} changed images")
    gain, low, high = _bounds(tally, changed, predicted, found, z)
    verdict = "unknown"
    if tally.labels >= min(MIN_VERDICT_LABELS, changed):
        _, sure_low, sure_high = _bounds(tally, changed, predicted, found, max(z, VERDICT_Z))
        verdict = "helped" if sure_low > 0 else "hurt" if sure_high < 0 else "unknown"
    return GainEstimate(gain, low, high, tally, changed, predicted, found, verdict)


def labels_for_margin(share_changed: float, changed: int, margin: float = TARGET_MARGIN, z: float = Z) -> int:
    """About how many labeled changed images give a 90% half-width of ``margin`` (at most all of them).

    Normal approximation with the worst-case score variance 1 and the finite-population correction.
    """
    if changed == 0:
        return 0
    m0 = PLANNING_VARIANCE * (z * share_changed / margin) ** 2
    return min(changed, math.ceil(m0 / (1 + (m0 - 1) / changed)) if m0 > 1 else 1)
