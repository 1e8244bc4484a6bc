"""Class priors: the prior file's checks, the EM estimate, the prior-aware balance and the fairness loss."""

import math

import pytest
import torch

from must_cli.base.errors import MustError
from must_cli.method.losses import fairness_loss
from must_cli.method.priors import em_prior, label_balance, read_prior_file, resolve_prior, total_variation

CLASSES = ["cat", "dog", "sea lion"]


def _write(tmp_path, text):
    path = tmp_path / "prior.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_prior_reduces_to_the_papers_fairness_term_when_uniform():
    p_bar = torch.tensor([0.5, 0.3, 0.15, 0.05])
    paper = -torch.log(p_bar).mean()
    assert torch.isclose(fairness_loss(p_bar, torch.full((4,), 0.25)), paper)
    assert torch.isclose(fairness_loss(p_bar), paper)


def test_fairness_is_cross_entropy_to_the_prior_and_smallest_at_the_prior():
    # An abandoned inference generator elsewhere in the suite can leave inference mode on in this thread.
    with torch.inference_mode(False), torch.enable_grad():
        prior = torch.tensor([0.7, 0.2, 0.1])
        p_bar = torch.tensor([0.5, 0.25, 0.25])
        expected = -(0.7 * math.log(0.5) + 0.2 * math.log(0.25) + 0.1 * math.log(0.25))
        assert math.isclose(fairness_loss(p_bar, prior).item(), expected, rel_tol=1e-6)
        logits = torch.zeros(3, requires_grad=True)
        opt = torch.optim.SGD([logits], lr=1.0)
        for _ in range(500):
            opt.zero_grad()
            fairness_loss(logits.softmax(0), prior).backward()
            opt.step()
    assert torch.allclose(logits.softmax(0), prior, atol=1e-3)  # not uniform: the prior


def test_prior_file_is_read_matched_and_normalised(tmp_path):
    path = _write(tmp_path, "# shares from last year's sales\nDog 2\nsea  lion 1\n\ncat 5\n")
    prior = read_prior_file(path, CLASSES)
    assert torch.allclose(prior, torch.tensor([5 / 8, 2 / 8, 1 / 8]))
    assert resolve_prior(str(path), CLASSES, lambda: pytest.fail("no inference for a file")).sum().item() == \
        pytest.approx(1.0)


@pytest.mark.parametrize("text, fragment", [
    ("cat 0.5\ndog 0.5\n", "no share for 1 class(es) (sea lion)"),
    ("cat 0.5\ndog 0.3\nsea lion 0.2\ncat 0.1\n", "line 4: 'cat' is listed twice"),
    ("cat 0.5\nbird 0.3\nsea lion 0.2\n", "line 2: 'bird' is not in the class list"),
    ("cat 0.5\ndog lots\nsea lion 0.2\n", "line 2: share 'lots' is not a number"),
    ("cat 0.5\ndog 0\nsea lion 0.2\n", "line 2: share 0 must be a positive number"),
    ("cat 0.5\ndog nan\nsea lion 0.2\n", "line 2: share nan must be a positive number"),
    ("cat\ndog 0.3\nsea lion 0.2\n", "line 1: expected 'class-name share'"),
])
def test_bad_prior_files_are_one_line_errors_naming_file_and_line(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(MustError) as e:
        read_prior_file(path, CLASSES)
    assert fragment in str(e.value) and "prior.txt" in str(e.value) and "\n" not in str(e.value)


def test_unknown_prior_choice_is_a_one_line_error(tmp_path):
    with pytest.raises(MustError, match="neither uniform, estimate nor an existing file"):
        resolve_prior(str(tmp_path / "nope.txt"), CLASSES, lambda: torch.ones(1, 3))
    assert resolve_prior("uniform", CLASSES, lambda: pytest.fail("uniform needs no inference")) is None


def test_em_recovers_the_shares_that_plain_averaging_underestimates():
    # Posteriors of a calibrated classifier (made under a uniform prior) on a 70/20/10 folder.
    torch.manual_seed(0)
    true = torch.tensor([0.7, 0.2, 0.1])
    labels = torch.multinomial(true, 20000, replacement=True)
    means = torch.eye(3)[labels] * 1.5
    x = means + torch.randn(20000, 3)
    posteriors = (1.5 * x).softmax(1)  # exact posterior of this Gaussian model under a uniform prior
    averaged = posteriors.mean(0)
    estimated = em_prior(posteriors)
    assert total_variation(estimated, true) < 0.02
    assert total_variation(averaged, true) > 0.1  # the first EM step alone is far off
    assert math.isclose(estimated.sum().item(), 1.0, rel_tol=1e-5)


def test_em_on_balanced_posteriors_stays_uniform():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(em_prior(probs), torch.full((3,), 1 / 3), atol=1e-5)


def test_balance_is_normalised_entropy_when_uniform_and_distance_to_prior_otherwise():
    assert label_balance(torch.tensor([1, 1, 0, 0])) == pytest.approx(0.5)  # the pre-prior measure
    prior = torch.tensor([0.7, 0.2, 0.1])
    assert label_balance(torch.tensor([70, 20, 10]), prior) == pytest.approx(1.0)
    assert label_balance(torch.tensor([0, 0, 9]), prior) == 0.0  # all in the rarest class
    # A uniform histogram is perfect under a uniform prior but not under a skewed one.
    assert label_balance(torch.tensor([10, 10, 10]), prior) < 0.9
    assert label_balance(torch.tensor([0, 0, 0]), prior) == 0.0


def test_em_never_leaves_a_class_without_share():
    probs = torch.tensor([[0.98, 0.01, 0.01]] * 50)  # every image looks like class 0
    prior = em_prior(probs)
    assert prior.min() > 0.009 and math.isclose(prior.sum().item(), 1.0, rel_tol=1e-5)
    assert 0.0 <= label_balance(torch.tensor([3, 0, 0]), prior) <= 1.0
