import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from must_cli.files import images
from must_cli.base.errors import MustError
from must_cli.files.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    discover_images,
    display_name,
    load_rgb,
    probe_image,
    scan_images,
)

from helpers import bomb_png

FORMATS = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
    ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF",
}


def rgb(path: Path, size=(4, 3), color=(200, 40, 10), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def warnings_list():
    lines: list[str] = []
    return lines, lines.append


# --- discovery -------------------------------------------------------------------------------


def test_every_extension_any_case_is_found_and_loads(tmp_path):
    assert set(FORMATS) == IMAGE_EXTENSIONS
    for ext, fmt in FORMATS.items():
        rgb(tmp_path / f"a{ext}", fmt=fmt)
        rgb(tmp_path / f"b{ext.upper()}", fmt=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    found = discover_images(tmp_path)
    assert len(found) == 2 * len(FORMATS)
    for path in found:
        assert probe_image(path) is None
        image = load_rgb(path)
        assert (image.mode, image.size) == ("RGB", (4, 3))


def test_recursive_sorted_and_hidden_skipped(tmp_path):
    for rel in ["b/2.png", "a/z/1.png", "a/0.png", "c.png", ".hidden/x.png", "a/.dot.png"]:
        rgb(tmp_path / rel)
    rels = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    assert rels == ["a/0.png", "a/z/1.png", "b/2.png", "c.png"]


def test_symlinks_followed_without_looping(tmp_path):
    rgb(tmp_path / "real" / "x.png")
    rgb(tmp_path / "outside" / "y.png")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link_file.png").symlink_to(tmp_path / "real" / "x.png")
    (tmp_path / "root" / "link_dir").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "loop").symlink_to(tmp_path / "root")  # points to its parent
    (tmp_path / "root" / "self").symlink_to("self")  # ELOOP
    (tmp_path / "root" / "broken.png").symlink_to(tmp_path / "missing.png")
    rels = [p.relative_to(tmp_path / "root").as_posix() for p in discover_images(tmp_path / "root")]
    assert rels == ["link_dir/y.png", "link_file.png"]


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("x")])
def test_root_must_be_a_folder(tmp_path, make):
    root = tmp_path / "photos"
    make(root)
    with pytest.raises(MustError, match=r"photos is not a folder: pass a folder of images"):
        discover_images(root)


def test_unreadable_folder_is_skipped_with_a_warning(tmp_path, monkeypatch):
    rgb(tmp_path / "ok" / "a.png")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):  # root ignores chmod, so simulate the permission error
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    lines, warn = warnings_list()
    assert discover_images(tmp_path, warn) == [tmp_path / "ok" / "a.png"]
    assert lines == [f"skipping folder {tmp_path / 'locked'}: Permission denied"]


def test_non_utf8_and_emoji_names(tmp_path, capsys):
    latin1 = rgb(tmp_path / os.fsdecode(b"caf\xe9.png"))
    emoji = rgb(tmp_path / "\U0001f408 cat.jpg")
    assert set(discover_images(tmp_path)) == {latin1, emoji}
    assert load_rgb(latin1).size == load_rgb(emoji).size == (4, 3)
    assert display_name(latin1).endswith("caf\\xe9.png")
    assert display_name(emoji).endswith("\U0001f408 cat.jpg")
    display_name(latin1).encode("utf-8")  # strict: must not raise


# --- decoding ----------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (8, 4), "red").save(path, exif=exif)
    assert Image.open(path).size == (8, 4)
    assert load_rgb(path).size == (4, 8)


def test_one_pixel_image(tmp_path):
    assert load_rgb(rgb(tmp_path / "dot.png", (1, 1))).getpixel((0, 0)) == (200, 40, 10)


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 77, (77, 77, 77)),
        ("LA", (77, 255), (77, 77, 77)),
        ("LA", (77, 0), (255, 255, 255)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ],
)
def test_modes_convert_to_rgb(tmp_path, mode, value, expected):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (2, 2), value).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == expected


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    loaded = load_rgb(path)
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((1, 0)) == (255, 255, 255)  # transparent -> white


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    assert [load_rgb(path).getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # float 0..1
        (np.array([[0, 100, 255]], dtype=np.int32), [0, 100, 255]),  # 8-bit values
        (np.array([[0, 32768, 65535]], dtype=np.int32), [0, 128, 255]),  # 16-bit values
        (np.array([[-10, 0, 10]], dtype=np.int32), [0, 128, 255]),  # stretched
    ],
)
def test_32_bit_and_float_tiff(tmp_path, values, expected):
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I", "F")
    assert [load_rgb(path).getpixel((x, 0))[0] for x in range(3)] == expected


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 2
    assert load_rgb(path).getpixel((0, 0)) == (255, 0, 0)


# --- bad files -----------------------------------------------------------------------------------


def test_truncated_jpeg_passes_probe_but_fails_load(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = tmp_path / "half.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe_image(path) is None
    with pytest.raises(ImageReadError, match=r"half\.jpg: unreadable: .*truncated") as info:
        load_rgb(path)
    assert info.value.path == path
    assert "replace it with a valid image or remove it" in str(info.value)


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, I am text"), "not an image"),
        (bomb_png, "too large"),
    ],
)
def test_bad_files_are_probed_and_refused(tmp_path, write, reason):
    path = tmp_path / "bad.jpg"
    write(path)
    assert probe_image(path).startswith(reason)
    with pytest.raises(ImageReadError, match=r"bad\.jpg: " + reason) as info:
        load_rgb(path)
    assert info.value.reason.startswith(reason)


def test_bomb_just_over_the_limit_is_refused(tmp_path):
    path = rgb(tmp_path / "big.png", (10, 10))
    assert probe_image(path, max_pixels=100) is None
    assert probe_image(path, max_pixels=99) == (
        "too large: 10 x 10 pixels, over --max-pixels 99 (a decompression-bomb guard): raise it if you trust the file")


def test_bombs_over_the_default_and_over_the_ceiling_are_refused(tmp_path):
    assert probe_image(bomb_png(tmp_path / "b.png", side=20000)).startswith("too large: 20000 x 20000 pixels")
    assert probe_image(tmp_path / "b.png", max_pixels=500_000_000) is None  # a raised --max-pixels lets it through
    assert probe_image(bomb_png(tmp_path / "c.png"), max_pixels=10**9).startswith("too large: over the decompression")


def test_a_144_megapixel_scan_is_kept_with_a_warning(tmp_path):
    """The 12,000 x 12,000 PNG a user reported: under the default max_pixels, decoded reduced, one warning line."""
    path = tmp_path / "photos" / "scan.png"
    path.parent.mkdir()
    Image.new("L", (12000, 12000), 90).save(path, compress_level=1)
    assert 12000 * 12000 < DEFAULT_MAX_PIXELS
    lines, warn = warnings_list()
    kept, skipped = scan_images(path.parent, warn)
    assert kept == [path] and skipped == []
    assert lines == [f"{path}: 12000 x 12000 pixels, decoded at 1/2 of each side to stay under 89,478,485 pixels"]


@pytest.mark.parametrize("fmt, expect", [("PNG", (13, 10)), ("JPEG", (13, 10))])
def test_large_images_are_decoded_reduced(tmp_path, monkeypatch, fmt, expect):
    monkeypatch.setattr(images, "LARGE_PIXELS", 150)  # stands for PIL's 89.5 MP
    path = rgb(tmp_path / "big.img", (50, 40), fmt=fmt)  # 2000 pixels: 1/4 of each side
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == expect and image.width * image.height <= 150
    assert np.abs(np.asarray(image, dtype=int) - (200, 40, 10)).max() < 8  # the same picture, smaller


def test_permission_denied(tmp_path, monkeypatch):
    path = rgb(tmp_path / "secret.png")

    def denied(*args, **kwargs):  # root ignores chmod 000, so simulate it
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    assert probe_image(path) == "permission denied"
    with pytest.raises(ImageReadError, match="secret.png: permission denied"):
        load_rgb(path)


# --- scanning ---------------------------------------------------------------------------------------


def test_scan_keeps_good_and_warns_once_per_bad_file(tmp_path):
    good = rgb(tmp_path / "photos" / "good.png")
    bad = tmp_path / "photos" / "bad.jpg"
    bad.write_text("text")
    empty = tmp_path / "photos" / "sub" / "empty.png"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    lines, warn = warnings_list()
    kept, skipped = scan_images(tmp_path / "photos", warn)
    assert kept == [good]
    assert skipped == [(bad, "not an image"), (empty, "empty file")]
    assert lines == [f"skipping {bad}: not an image", f"skipping {empty}: empty file"]


@pytest.mark.parametrize("content", [None, "text"])
def test_scan_without_readable_images_fails(tmp_path, content):
    root = tmp_path / "photos"
    root.mkdir()
    if content:
        (root / "fake.png").write_text(content)
    with pytest.raises(MustError, match=r"no readable image in .*photos: supported formats are bmp, gif, jpeg"):
        scan_images(root, lambda line: None)
