"""Class priors: the class shares the fairness term pushes the average prediction toward.

MUST's fairness term assumes every class is equally common. A real folder rarely is (70%
of a shop's photos may show one product), and a uniform target then moves images into rare
classes. ``--class-prior`` picks the target instead:

* ``uniform``: the paper's term, right for balanced folders;
* ``estimate``: the shares estimated without labels by EM on the zero-shot probabilities
  (Saerens, Latinne & Decaestecker 2002);
* a FILE of ``name share`` lines: shares the user knows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch

from must_cli.files.classnames import read_lines
from must_cli.base.errors import MustError
from must_cli.files.images import display_name
from must_cli.method.inference import iter_probs
from must_cli.method.model import MustModel, Preprocess
from must_cli.base.runtime import Autocast

UNIFORM, ESTIMATE = "uniform", "estimate"
EM_MAX_ITERS = 1000
EM_TOLERANCE = 1e-6  # largest change of any share between two EM steps at convergence


def read_prior_file(path: Path, classnames: Sequence[str]) -> torch.Tensor:
    """Shares from ``name share`` lines (one per class, '#' comments allowed), normalised to sum to 1.

    The share is the last word of a line, so class names may contain spaces. Names match the
    class list ignoring case and repeated spaces. Every class must be listed exactly once with a
    positive share: a zero share would make the class's fairness target (and log-share) undefined.
    """
    name = display_name(path)
    index = {c.casefold(): i for i, c in enumerate(classnames)}
    shares = [math.nan] * len(classnames)
    for number, line in read_lines(path, "class prior"):
        parts = line.rsplit(None, 1)
        where = f"{name} line {number}"
        if len(parts) != 2:
            raise MustError(f"{where}: expected 'class-name share', e.g. 'cat 0.25': add the share after the name")
        label, text = " ".join(parts[0].split()), parts[1]
        try:
            share = float(text)
        except ValueError:
            raise MustError(f"{where}: share {text!r} is not a number: write e.g. 'cat 0.25'") from None
        if not math.isfinite(share) or share <= 0:
            raise MustError(f"{where}: share {text} must be a positive number: give a rare class a small share "
                            "such as 0.001, or remove the class from the class list")
        k = index.get(label.casefold())
        if k is None:
            raise MustError(f"{where}: {label!r} is not in the class list: use the names of the class file")
        if not math.isnan(shares[k]):
            raise MustError(f"{where}: {label!r} is listed twice: give each class one line")
        shares[k] = share
    missing = [c for c, s in zip(classnames, shares) if math.isnan(s)]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise MustError(f"{name}: no share for {len(missing)} class(es) ({shown}): add one 'name share' line per class")
    prior = torch.tensor(shares, dtype=torch.float64)
    return (prior / prior.sum()).float()


def em_prior(probs: torch.Tensor, max_iters: int = EM_MAX_ITERS, tol: float = EM_TOLERANCE) -> torch.Tensor:
    """Class shares of the images behind ``probs`` (N, K), by EM prior re-estimation (Saerens et al. 2002).

    The probabilities are taken to be posteriors under a uniform prior (CLIP's prompts carry no
    class frequencies). Each step re-weights every posterior by the current shares and averages:
    pi_k <- mean_i pi_k p_ik / sum_j pi_j p_ij, which climbs the likelihood of the images under pi.
    The plain average of the probabilities (or of argmax counts) is the first step; it stays
    pulled toward uniform by every confused image, which EM removes. EM may drive a class to
    zero; no share is left below half an image (1 / 2N), which N images cannot resolve anyway,
    so the prior stays a valid target and the balance measure stays finite.
    """
    p = probs.double().clamp_min(1e-12)
    pi = torch.full((p.shape[1],), 1.0 / p.shape[1], dtype=torch.float64)
    for _ in range(max_iters):
        weighted = p * pi
        new = (weighted / weighted.sum(1, keepdim=True)).mean(0)
        done = (new - pi).abs().max() < tol
        pi = new
        if done:
            break
    pi = pi.clamp_min(0.5 / p.shape[0])
    return (pi / pi.sum()).float()


def resolve_prior(spec: str, classnames: Sequence[str],
                  zero_shot_probs: Callable[[], torch.Tensor]) -> torch.Tensor | None:
    """The prior ``--class-prior`` asks for: None for uniform, else K shares summing to 1.

    ``zero_shot_probs`` is called only for ``estimate``, so the other choices cost no inference.
    """
    if spec == UNIFORM:
        return None
    if spec == ESTIMATE:
        return em_prior(zero_shot_probs())
    path = Path(spec)
    if not path.exists():
        raise MustError(f"--class-prior {spec}: neither uniform, estimate nor an existing file: "
                        "pass uniform, estimate or a file of 'name share' lines")
    return read_prior_file(path, classnames)


def zero_shot_probs(model: MustModel, paths: Sequence[Path], pre: Preprocess, device: torch.device, workers: int,
                    autocast: Autocast) -> torch.Tensor:
    """Class probabilities (N, K) of the decodable images among ``paths``: what ``estimate`` is computed from."""
    was_training, origin = model.training, next(model.parameters()).device
    rows = [probs[ok] for _, probs, ok in iter_probs(model, paths, pre, device, workers=workers, autocast=autocast)]
    model.to(origin).train(was_training)
    return torch.cat(rows)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Half the L1 distance between two distributions: the share of images that would have to change class."""
    return 0.5 * float((p.double() - q.double()).abs().sum())


def label_balance(hist: torch.Tensor, prior: torch.Tensor | None = None) -> float:
    """How close predicted class counts are to the prior: 1 when they match it, 0 when all fall in its rarest class.

    1 - KL(p || pi) / log(1 / min pi). With a uniform prior this is the normalised entropy of
    the counts, the measure used before priors existed, so a collapse reads the same either way.
    """
    k = hist.numel()
    pi = torch.full((k,), 1.0 / k, dtype=torch.float64) if prior is None else prior.double().cpu()
    p = hist.double().cpu() / hist.sum().clamp_min(1).double().cpu()
    seen = p > 0
    if not seen.any():
        return 0.0
    kl = float((p[seen] * (p[seen] / pi[seen]).log()).sum())
    return max(0.0, 1.0 - kl / math.log(1.0 / float(pi.min()))) + 0.0  # + 0.0: no -0.0 in logs


def describe(class_prior: dict, limit: int = 8) -> str:
    """'estimate: cat 0.410, dog 0.220, ...' from as_metadata's record, largest shares first, for the run summary."""
    shares = sorted(class_prior["shares"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{c} {s:.3f}" for c, s in shares[:limit])
    return f"{class_prior['source']}: {shown}" + (f", ... ({len(shares) - limit} more)" if len(shares) > limit else "")


def as_metadata(spec: str, prior: torch.Tensor | None, classnames: Sequence[str]) -> dict:
    """What the model file and metrics record: where the prior came from and each class's share."""
    shares = [1.0 / len(classnames)] * len(classnames) if prior is None else prior.tolist()
    source = spec if spec in (UNIFORM, ESTIMATE) else "file"
    return {"source": source, "shares": {c: round(float(s), 6) for c, s in zip(classnames, shares)}}
