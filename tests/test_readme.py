"""The README's two setup commands are what CI runs, and they are the whole setup."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line as argv lists, as the shell would split them (quotes, spacing and
    `&&`/`;` layout do not matter); the script of `bash -c` and a `NAME=$(...)` substitution are opened too."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            found.append([])
        else:
            found[-1].append(token)
    out = [argv for argv in found if argv]
    for argv in list(out):
        if argv[:2] == ["bash", "-c"]:
            out += shell_commands(argv[2])
        substitution = re.fullmatch(r"\w+=\$\((.*)\)", argv[0])
        if substitution:
            out += shell_commands(substitution.group(1))
    return out


def test_readme_has_the_demo_and_the_test_command():
    command = _readme_commands().command
    assert shell_commands(command("demo")) == [["pip", "install", "-e", ".[export]"], ["bash", "examples/demo.sh"]]
    assert shell_commands(command("test")) == [["pip", "install", "-e", ".[test]"], ["python", "-m", "pytest", "-q"]]


def test_ci_runs_exactly_the_readme_blocks_after_the_torch_pins():
    """.ci/run may only set up the environment (venv, the local torch pair) before running the two README lines."""
    run = [argv for line in (ROOT / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")
           for argv in shell_commands(line)]
    installs = [argv for argv in run if "pip" in argv and "install" in argv]
    assert installs == [["python", "-m", "pip", "install", "-q", "torch==2.14.1", "torchvision==0.29.1"]]
    assert ["for", "block", "in", "demo", "test"] in run  # each marked block ...
    assert ["python", ".ci/readme_commands.py", "$block"] in run and ["$line"] in run  # ... is read and run
    assert not [argv for argv in run if any("pytest" in word or "demo.sh" in word for word in argv)]  # only so


def test_test_extra_brings_what_the_tests_import():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("pytest") for req in extras["test"])
    assert "must-cli[export]" in extras["test"]  # test_export needs onnx, onnxruntime, onnxscript
    assert {re.split(r"[<>=]", r)[0] for r in extras["export"]} == {"onnx", "onnxruntime", "onnxscript"}


def test_the_package_pins_no_torch_index():
    """CPU-only wheels are the README's advice, not a constraint: the package accepts torch from any index."""
    text = (ROOT / "pyproject.toml").read_text()
    assert "download.pytorch.org" not in text and "+cpu" not in text
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme


@pytest.mark.parametrize("text", [
    "no markers at all",
    "<!-- ci:demo -->\n```\npip install a\npip install b\n```\n<!-- /ci:demo -->\n",
])
def test_a_missing_or_multi_line_block_fails_ci_loudly(text):
    with pytest.raises(SystemExit, match="expected one marked block 'ci:demo'"):
        _readme_commands().command("demo", text)


def test_the_demo_command_names_a_script_that_exists():
    words = shlex.split(_readme_commands().command("demo"))
    assert (ROOT / words[words.index("bash") + 1]).is_file()


def test_the_cpu_choice_comes_before_the_marked_commands():
    """Issue 21, item 1: a reader going in order sees the CPU wheels before the demo installs torch."""
    readme = (ROOT / "README.md").read_text()
    cpu = readme.index("No NVIDIA GPU? Run this first")
    assert cpu < readme.index("<!-- ci:demo -->") < readme.index("<!-- ci:test -->")
    assert readme.index("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu") > cpu
    assert readme.index("pip install torch torchvision --index-url") < readme.index("<!-- ci:demo -->")


def test_the_readme_promises_no_pypi_install():
    """Issue 21, item 3: must-cli is not on PyPI; install from a checkout or a built wheel."""
    readme = (ROOT / "README.md").read_text()
    assert '"must-cli[export]"' not in readme and "from PyPI" not in readme
    assert 'pip install "dist/must_cli-' in readme and "pip wheel --no-deps -w dist ." in readme


def test_the_top_example_uses_the_class_file_init_writes():
    """Issue 21, item 4: `must init ./project` writes ./project/classes.txt, and the next line uses that file."""
    readme = (ROOT / "README.md").read_text()
    top = readme[: readme.index("## Install")]
    assert "must init ./project" in top and "--classes ./project/classes.txt" in top
    assert "--classes classes.txt" not in top
