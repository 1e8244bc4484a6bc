import time

import pytest

from must_cli.files.classnames import (
    fill_templates,
    read_class_file,
    read_templates,
    resolve_templates,
    shipped_templates,
    template_sets,
)
from must_cli.base.config import load_preset, preset_names
from must_cli.base.errors import MustError


def write(tmp_path, text, name="classes.txt", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_comments_blank_lines_and_whitespace(tmp_path):
    path = write(tmp_path, "# my classes\n\n  cat \n\t\ngolden   retriever\n   # indented comment\ndog")
    assert read_class_file(path) == ["cat", "golden retriever", "dog"]


def test_bom_and_crlf(tmp_path):
    path = write(tmp_path, "cat\r\ndog\r\n\r\n", encoding="utf-8-sig")
    assert read_class_file(path) == ["cat", "dog"]


def test_labels_may_look_like_paths(tmp_path):
    path = write(tmp_path, "a/b\n..\n../etc\ncafé 🐈\n")
    assert read_class_file(path) == ["a/b", "..", "../etc", "café 🐈"]


def test_reading_classes_grows_linearly_not_quadratically(tmp_path):
    """A ratio, not a wall-clock bound: 10x the classes may cost at most 50x the time (measured 14-29x on a
    loaded 2-core machine; a pairwise duplicate check costs 100x). Best of 7, so a busy machine cannot fake it."""
    def best_time(n: int) -> float:
        path = write(tmp_path, "\n".join(f"class {i}" for i in range(n)), name=f"classes-{n}.txt")
        times = []
        for _ in range(7):
            start = time.perf_counter()
            classes = read_class_file(path)
            times.append(time.perf_counter() - start)
        assert len(classes) == n and classes[-1] == f"class {n - 1}"
        return min(times)

    assert best_time(50_000) < 50 * best_time(5_000)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat\ndog\n\n# c\nbird\nfish\nCat\n", r"classes\.txt line 7: 'Cat' repeats line 1: class names must be unique"),
        ("golden retriever\ngolden  Retriever\n", r"classes\.txt line 2: 'golden Retriever' repeats line 1"),
        ("\n  \n# only comments\n", r"classes\.txt lists 0 class\(es\): list at least 2 classes"),
        ("cat\n", r"classes\.txt lists 1 class\(es\)"),
        ("cat\nd\0g\n", r"classes\.txt line 2: the class name contains a NUL character"),
    ],
)
def test_bad_class_files(tmp_path, text, message):
    with pytest.raises(MustError, match=message):
        read_class_file(write(tmp_path, text))


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(MustError, match=r"nope\.txt does not exist: pass the path of your class list file"):
        read_class_file(tmp_path / "nope.txt")
    with pytest.raises(MustError, match=r"classes\.txt line 2: not UTF-8 text: save the file as UTF-8"):
        read_class_file(write(tmp_path, "cat\ncafé\n", encoding="latin-1"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(MustError, match=r"cannot read .*folder: .*check the path"):
        read_class_file(tmp_path / "folder")


def test_templates(tmp_path):
    path = write(tmp_path, "\ufeff# prompts\r\na photo of a {}.\r\n\r\n{} in {weird} braces\r\n", "t.txt")
    templates = read_templates(path)
    assert templates == ["a photo of a {}.", "{} in {weird} braces"]
    assert fill_templates(templates, "a {b}") == ["a photo of a a {b}.", "a {b} in {weird} braces"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a photo of a {}.\na photo\n", r"t\.txt line 2: 'a photo' must contain '\{\}' exactly once"),
        ("# c\n{} and {}\n", r"t\.txt line 2: '\{\} and \{\}' must contain '\{\}' exactly once"),
        ("# nothing\n\n", r"t\.txt has no template: write at least one prompt"),
    ],
)
def test_bad_templates(tmp_path, text, message):
    with pytest.raises(MustError, match=message):
        read_templates(write(tmp_path, text, "t.txt"))


def test_imagenet_templates():
    imagenet = shipped_templates("imagenet")
    assert len(imagenet) == len(set(imagenet)) == 80
    assert imagenet[0] == "a bad photo of a {}."
    assert all(t.count("{}") == 1 for t in imagenet)
    assert fill_templates(imagenet[:2], "dog") == ["a bad photo of a dog.", "a photo of many dog."]


def test_paper_template_sets_ship_with_their_sizes_and_each_paper_preset_names_its_own():
    sizes = {name: len(shipped_templates(name)) for name in template_sets()}
    assert sizes == {"caltech101": 34, "dtd": 8, "food101": 1, "gtsrb": 3, "imagenet": 80, "pets": 1,
                     "sun397": 2, "ucf101": 48}
    assert shipped_templates("food101") == ["a photo of {}, a type of food."]
    for preset in preset_names():
        dataset = preset.split("-")[0]
        expected = dataset if dataset in sizes else "imagenet"
        assert load_preset(preset).get("template_set", "imagenet") == expected, preset


def test_templates_file_overrides_the_set_and_unknown_set_is_one_line(tmp_path):
    assert resolve_templates(write(tmp_path, "a {} here\n", "t.txt"), "food101") == ["a {} here"]
    assert resolve_templates(None, "gtsrb")[0] == 'a zoomed in photo of a "{}" traffic sign.'
    with pytest.raises(MustError, match="unknown template_set 'nope': choose one of caltech101, dtd"):
        resolve_templates(None, "nope")

