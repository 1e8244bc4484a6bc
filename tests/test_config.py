"""Configuration layering, validation and the shipped presets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from must_cli.base.config import MustConfig, load_preset, preset_names, resolve_config, to_toml
from must_cli.base.errors import MustError

# (base_lr, epochs, threshold, mask_ratio, mask_patch_size, w_align, w_fair, ema_mu0, ema_mu_steps)
TABLE_KEYS = ("base_lr", "epochs", "threshold", "mask_ratio", "mask_patch_size", "w_align", "w_fair",
              "ema_mu0", "ema_mu_steps")
TABLE_ROWS = {  # rows of MUST-NOTES.md's Table 10
    "imagenet-b16": ("ViT-B-16", (2e-5, 30, 0.7, 0.3, 32, 0.2, 1, 0.999, 2000)),
    "imagenet-l14": ("ViT-L-14", (4e-5, 20, 0.5, 0.3, 56, 0.5, 1, 0.999, 2000)),
    "gtsrb-b16": ("ViT-B-16", (2e-5, 20, 0.3, 0.5, 32, 0.5, 1, 0.99, 500)),
    "dtd-b16": ("ViT-B-16", (2e-5, 60, 0.4, 0.1, 32, 0.2, 1, 0.99, 100)),
}


def _values(cfg: MustConfig) -> tuple:
    return tuple(getattr(cfg, key) for key in TABLE_KEYS)


def test_defaults_are_the_imagenet_b16_row():
    cfg = MustConfig()
    assert (cfg.model, cfg.pretrained) == ("ViT-B-16", "openai")
    assert _values(cfg) == pytest.approx(TABLE_ROWS["imagenet-b16"][1])
    assert cfg.ema_mu_final == 0.9998 and cfg.weight_decay == 0.05 and cfg.layer_decay == 0.65


@pytest.mark.parametrize("name", sorted(TABLE_ROWS))
def test_paper_presets_match_the_table(name):
    model, row = TABLE_ROWS[name]
    cfg = resolve_config(preset=name)
    assert (cfg.model, cfg.pretrained) == (model, "openai")
    assert _values(cfg) == pytest.approx(row)


def test_every_shipped_preset_loads_and_validates():
    names = preset_names()
    assert {"small-dataset", "medium-dataset", "large-dataset", "hard-domain", "tiny-images", "caltech101-b16"} <= set(names)
    assert len(names) == 19  # 14 paper rows + 5 situation presets
    for name in names:
        data = load_preset(name)
        assert "meta" not in data and data, name
        cfg = resolve_config(preset=name)
        assert all(getattr(cfg, key) == pytest.approx(value) for key, value in data.items()), name


def test_practitioner_presets_leave_the_backbone_alone():
    for name in ("small-dataset", "medium-dataset", "large-dataset", "hard-domain"):
        assert not {"model", "pretrained", "batch_size"} & set(load_preset(name)), name


def test_override_order_preset_then_file_then_flags(tmp_path):
    config = tmp_path / "must.toml"
    config.write_text("epochs = 7\nthreshold = 0.55\n")
    cfg = resolve_config(preset="gtsrb-b16", config_file=config, overrides={"epochs": 3, "seed": None})
    assert cfg.epochs == 3  # flag beats file
    assert cfg.threshold == 0.55  # file beats preset (0.3)
    assert cfg.mask_ratio == 0.5  # preset beats default (0.3)
    assert cfg.seed == 0  # a flag left unset (None) does not override


def test_unknown_keys_in_file_name_keys_and_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("epochs = 2\nlearning_rate = 1e-3\nthreshhold = 0.5\n")
    with pytest.raises(MustError) as exc:
        resolve_config(config_file=config)
    message = str(exc.value)
    assert "learning_rate" in message and "threshhold" in message and str(config) in message
    assert "\n" not in message


def test_unknown_preset_lists_the_presets():
    with pytest.raises(MustError) as exc:
        resolve_config(preset="tiny-dataset")
    assert "tiny-dataset" in str(exc.value)
    assert all(name in str(exc.value) for name in preset_names())


def test_invalid_value_is_one_line_naming_the_key(tmp_path):
    config = tmp_path / "must.toml"
    config.write_text("threshold = 1.5\n")
    with pytest.raises(MustError) as exc:
        resolve_config(config_file=config)
    assert "threshold" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("preset", [None, "sun397-l14", "hard-domain"])
def test_to_toml_round_trips(tmp_path, preset):
    cfg = resolve_config(preset=preset, overrides={"model": 'local-dir:C:\\models\\"odd"', "workers": 0})
    for comments in (False, True):
        path = tmp_path / f"c{comments}.toml"
        path.write_text(to_toml(cfg, comments=comments))
        assert resolve_config(config_file=path) == cfg


FLOAT_FIELDS = sorted(name for name, f in MustConfig.model_fields.items() if f.annotation is float)


def _takes_a_float(name: str) -> bool:
    """Whether the field accepts some plain float, found by trying values, not by reading its annotation."""
    for value in (0.25, 0.5, 0.9, 0.999, 1.5, 3e-4, 30.0):
        try:
            MustConfig(**{name: value})
            return True
        except ValidationError:
            continue
    return False


def test_every_field_that_takes_a_float_is_checked_for_inf_and_nan():
    """FLOAT_FIELDS reads annotations; a field typed `float | None` or `Annotated[float, ...]` would slip past
    the non-finite test below. Here the fields are found by what they accept, and must be the same set."""
    takes_floats = {name for name in MustConfig.model_fields if _takes_a_float(name)}
    assert takes_floats == set(FLOAT_FIELDS)
    assert {"base_lr", "min_lr", "threshold", "w_fair", "ema_mu0"} <= takes_floats


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_refused_naming_the_key(name, value):
    """`--lr inf` used to train every weight into NaN; every float field refuses inf and nan, from flags too."""
    with pytest.raises(MustError, match=rf"^config value '{name}' = {value!r}: Input should be a finite number$"):
        resolve_config(overrides={name: value})


@pytest.mark.parametrize("text", ["base_lr = inf", "w_align = nan", "min_lr = -inf"])
def test_non_finite_floats_in_toml_are_refused(tmp_path, text):
    config = tmp_path / "must.toml"
    config.write_text(text + "\n")
    with pytest.raises(MustError, match=f"config value '{text.split()[0]}'.*finite"):
        resolve_config(config_file=config)


@pytest.mark.parametrize("text, key", [('guard = "no"', "guard"), ("seed = true", "seed"), ('epochs = "1"', "epochs"),
                                       ("batch_size = 8.0", "batch_size"), ("precision = 1", "precision"),
                                       ('threshold = "0.5"', "threshold")])
def test_toml_values_of_the_wrong_type_are_errors_not_coerced(tmp_path, text, key):
    config = tmp_path / "must.toml"
    config.write_text(text + "\n")
    with pytest.raises(MustError, match=f"^config value '{key}' = ") as exc:
        resolve_config(config_file=config)
    assert "\n" not in str(exc.value)


def test_strict_types_still_take_ints_for_floats_and_typed_flags(tmp_path):
    config = tmp_path / "must.toml"
    config.write_text("w_fair = 1\nthreshold = 0.5\nguard = false\n")
    cfg = resolve_config(preset="hard-domain", config_file=config,
                         overrides={"epochs": 2, "base_lr": 1e-3, "mim": False, "precision": "fp32", "device": "cpu"})
    assert (cfg.w_fair, cfg.threshold, cfg.guard, cfg.epochs, cfg.base_lr, cfg.mim) == (1.0, 0.5, False, 2, 1e-3, False)


def test_max_pixels_is_a_config_field_with_bounds():
    assert MustConfig().max_pixels == 250_000_000
    assert resolve_config(overrides={"max_pixels": 400_000_000}).max_pixels == 400_000_000
    with pytest.raises(MustError, match="max_pixels"):
        resolve_config(overrides={"max_pixels": 0})
