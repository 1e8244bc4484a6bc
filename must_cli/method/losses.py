"""The four MUST objectives, one pure function each, named after the paper's equations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def self_training_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_cls (eq. 2): cross-entropy to the teacher's hard label where the teacher is confident.

    Averaged over the confident images only, as the authors' code does
    (engine_self_training.py:62), so the term's weight against the other objectives does not
    shrink with the kept fraction. Confident means strictly above tau, as there. With nothing
    kept the term is an exact 0 with a zero gradient, never NaN. Returns (loss, keep mask).
    """
    confidence, pseudo = teacher_probs.max(dim=1)
    keep = confidence > threshold
    ce = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
    # where(), not ce * keep: a non-finite CE on a dropped row must not leak in as 0 * inf = NaN.
    return torch.where(keep, ce, 0.0).sum() / keep.sum().clamp_min(1), keep


def fairness_loss(mean_probs: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """L_reg (eq. 3) as a cross-entropy to the class prior: -sum_k pi_k log p_bar_k.

    Smallest when the average prediction equals pi. Without a prior pi is uniform and this is
    the paper's -1/K sum_k log p_bar_k; a folder whose classes are not equally common passes
    its shares (must_cli/priors.py) so rare classes are not filled with common ones.
    """
    log_p = torch.log(mean_probs.clamp_min(1e-12))
    if prior is None:
        return -log_p.mean()
    return -(prior.to(log_p) * log_p).sum()


def mim_loss(reconstruction: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """L_mim (eq. 4): L1 between predicted and true (normalised) pixels over masked pixels only.

    ``pixel_mask`` is (B, 1, H, W) with 1 on masked pixels; dividing by 3 makes it a
    per-channel mean, as the reference does.
    """
    l1 = (reconstruction.float() - target.float()).abs() * pixel_mask
    return l1.sum() / pixel_mask.sum().clamp_min(1.0) / 3


def alignment_loss(cls_embedding: torch.Tensor, patch_embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_align (eq. 5): squared L2 between normalised [CLS] and each [MSK] embedding, mean over masked tokens.

    ``cls_embedding`` (B, D) and ``patch_embeddings`` (B, N, D) are L2-normalised; ``mask`` is (B, N) bool.
    """
    dist = (cls_embedding.float().unsqueeze(1) - patch_embeddings.float()).pow(2).sum(-1)  # (B, N)
    m = mask.float()
    return (dist * m).sum() / m.sum().clamp_min(1.0)
