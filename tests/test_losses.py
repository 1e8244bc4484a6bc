"""Each MUST objective against values computed by hand."""

import math

import torch

from must_cli.method.losses import alignment_loss, fairness_loss, mim_loss, self_training_loss


def test_self_training_keeps_confident_rows_and_averages_over_them_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])  # rows 0 and 2 pass tau = 0.7
    loss, keep = self_training_loss(logits, teacher, threshold=0.7)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))  # target 0
    ce2 = math.log(2)  # equal logits, target 1
    assert keep.tolist() == [True, False, True]
    assert math.isclose(loss.item(), (ce0 + ce2) / 2, rel_tol=1e-6)  # over the 2 kept rows, not the 3


def test_self_training_threshold_is_strict_and_empty_batch_is_a_zero_with_zero_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    teacher = torch.tensor([[0.5, 0.25, 0.25], [0.6, 0.2, 0.2]])
    loss, keep = self_training_loss(logits, teacher, threshold=0.5)
    assert keep.tolist() == [False, True]  # 0.5 is not > 0.5, as in the reference
    assert math.isclose(loss.item(), math.log(3), rel_tol=1e-6)
    loss, keep = self_training_loss(logits, teacher, threshold=0.9)
    loss.backward()
    assert loss.item() == 0.0 and not keep.any()
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def test_self_training_ignores_non_finite_logits_on_dropped_rows():
    logits = torch.tensor([[float("inf"), 0.0], [3.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.6, 0.4], [0.9, 0.1]])  # row 0 dropped at tau 0.7
    loss, _ = self_training_loss(logits, teacher, threshold=0.7)
    loss.backward()
    assert math.isclose(loss.item(), math.log(1 + math.exp(-3)), rel_tol=1e-6)
    assert torch.isfinite(logits.grad[1]).all()


def test_fairness_is_minus_mean_log_of_average_prediction():
    p_bar = torch.tensor([0.5, 0.25, 0.25])
    expected = -(math.log(0.5) + 2 * math.log(0.25)) / 3
    assert math.isclose(fairness_loss(p_bar).item(), expected, rel_tol=1e-6)
    uniform = torch.full((4,), 0.25)
    assert math.isclose(fairness_loss(uniform).item(), math.log(4), rel_tol=1e-6)  # the minimum


def test_mim_is_l1_over_masked_pixels_per_channel():
    target = torch.zeros(1, 3, 2, 2)
    recon = torch.zeros(1, 3, 2, 2)
    recon[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])  # masked pixel, |err| sum 6
    recon[0, :, 1, 1] = 100.0  # unmasked pixel: ignored
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    mask[0, 0, 0, 1] = 1  # masked, zero error
    assert math.isclose(mim_loss(recon, target, mask).item(), 6 / 2 / 3, rel_tol=1e-6)


def test_alignment_is_squared_distance_averaged_over_masked_tokens():
    cls = torch.tensor([[1.0, 0.0]])
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    mask = torch.tensor([[False, True, True]])
    # distances: token1 = 2, token2 = 4; token0 unmasked
    assert math.isclose(alignment_loss(cls, patches, mask).item(), 3.0, rel_tol=1e-6)


def test_losses_have_gradients_where_the_paper_trains():
    logits = torch.randn(4, 3, requires_grad=True)
    loss, _ = self_training_loss(logits, torch.tensor([[1.0, 0, 0]] * 4), 0.5)
    fair = fairness_loss(logits.softmax(1).mean(0))
    (loss + fair).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
