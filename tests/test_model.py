"""The MUST network: text-built classifier, [MSK] substitution, decoder shape, tower checks."""

import pytest
import torch
import torch.nn.functional as F

from must_cli.files.classnames import fill_templates
from must_cli.base.errors import MustError
from must_cli.method.clip_loading import check_vit, load_clip
from must_cli.method.model import build_must_model, text_classifier

from helpers import CLASSES


def test_classifier_is_normalised_mean_of_normalised_prompt_embeddings(tiny_spec):
    clip, tokenizer = load_clip(tiny_spec, None)
    templates = ["a photo of a {}.", "a {} in the wild", "{}"]
    head = text_classifier(clip, tokenizer, CLASSES, templates, torch.device("cpu"))
    assert head.shape == (32, len(CLASSES))
    with torch.no_grad():
        for k, name in enumerate(CLASSES):
            emb = F.normalize(clip.encode_text(tokenizer(fill_templates(templates, name))), dim=-1).mean(0)
            assert torch.allclose(head[:, k], F.normalize(emb, dim=0), atol=1e-6)
    assert torch.allclose(head.norm(dim=0), torch.ones(len(CLASSES)), atol=1e-6)


def test_logits_use_the_checkpoint_logit_scale(tiny_spec):
    model, _ = build_must_model(tiny_spec, None, CLASSES, ["{}"], torch.device("cpu"))
    clip, _ = load_clip(tiny_spec, None)
    assert model.logit_scale.item() == pytest.approx(clip.logit_scale.exp().item())
    x = torch.randn(2, 3, 32, 32)
    out = model(x, features=True)
    assert torch.allclose(model(x), out.logits)
    assert torch.allclose(out.logits, model.logit_scale * out.cls_embedding @ model.classifier, atol=1e-5)


def test_msk_token_replaces_only_masked_patches(tiny_spec):
    model, _ = build_must_model(tiny_spec, None, CLASSES, ["{}"], torch.device("cpu"))
    x = torch.randn(1, 3, 32, 32)
    n = model.grid_size**2
    none = torch.zeros(1, n, dtype=torch.bool)
    assert torch.allclose(model(x, none), model(x))  # an all-False mask changes nothing
    mask = none.clone()
    mask[0, 0] = True
    y = x.clone()
    y[..., :8, :8] = 123.0  # pixels of patch 0 only: invisible once the patch is masked
    a = model(x, mask, features=True, reconstruct=True, embed_patches=True)
    b = model(y, mask, features=True, reconstruct=True, embed_patches=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert a.reconstruction.shape == (1, 3, 32, 32)
    assert a.patch_embeddings.shape == (1, n, 32)
    assert torch.allclose(a.patch_embeddings.norm(dim=-1), torch.ones(1, n), atol=1e-5)


def test_non_vit_towers_are_rejected():
    with pytest.raises(MustError, match="ViT image towers only"):
        check_vit(torch.nn.Linear(2, 2))


def test_loading_leaves_logging_as_it_was(tmp_path, caplog):
    """A failed load is quiet, but afterwards every logger (root included) logs as before."""
    import logging

    root_level, hub_level = logging.getLogger().level, logging.getLogger("huggingface_hub").level
    with pytest.raises(MustError):
        load_clip(f"local-dir:{tmp_path}", None)
    assert logging.getLogger().level == root_level and not logging.getLogger().filters
    assert logging.getLogger("huggingface_hub").level == hub_level
    with caplog.at_level(logging.WARNING):
        logging.getLogger("some.app").warning("still heard")
    assert "still heard" in caplog.text
