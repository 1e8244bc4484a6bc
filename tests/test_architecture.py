"""The layout rules of docs/architecture.md, checked.

must_cli/ is built in floors, bottom to top: base, files, method, training, commands, then the
CLI modules at the top level. A module imports only from its own floor or the floors below, so
no arrow runs back up; predict, eval and export load nothing of training; modules and functions
stay small enough to read.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "must_cli"
LAYERS = ("base", "files", "method", "training", "commands")  # bottom to top
TOP = {"__init__", "__main__", "cli", "cli_format", "cli_options", "launch"}  # the CLI floor, above commands
DATA = {"presets", "templates"}  # packages of data files (presets, prompt sets, the verify page), read at the base
MODULE_LIMIT, FUNCTION_LIMIT, WIDTH = 300, 50, 100


def modules() -> dict[str, Path]:
    """Dotted name -> file for every module of the package (data folders hold no .py files)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def floor(name: str) -> int:
    """0 for base ... 4 for commands, 5 for the CLI floor (must_cli itself and its top-level modules)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in DATA:
        return 0
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imports(path: Path) -> set[str]:
    """must_cli modules ``path`` imports, lazy (in-function) imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("must_cli"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("must_cli")}
    return found


def test_every_module_sits_on_a_floor():
    stray = [name for name in modules() if name.count(".") == 1 and name.split(".")[1] not in (*LAYERS, *TOP, *DATA)]
    deep = [name for name in modules() if name.count(".") > (3 if floor(name) == LAYERS.index("commands") else 2)]
    assert (stray, deep) == ([], [])


def test_no_import_runs_back_up():
    upward = sorted(f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})"
                    for name, path in modules().items() for target in imports(path)
                    if target != "must_cli" and floor(target) > floor(name))
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The floor rule fails on a real upward arrow (guards the test above against checking nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from must_cli.commands.adapt.command import run_adapt\n")
    assert floor("must_cli.files.runs") < floor(next(iter(imports(bad))))


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is above this floor")
        return None
sys.meta_path.insert(0, Block())
"""


@pytest.mark.slow
@pytest.mark.parametrize("layer", LAYERS)
def test_each_floor_imports_with_the_floors_above_blocked(layer):
    """Importing every module of a floor works when the floors above it (and the CLI) cannot load."""
    above = [f"must_cli.{name}" for name in LAYERS[LAYERS.index(layer) + 1:]]
    above += [f"must_cli.{name}" for name in TOP - {"__init__"}]
    own = [name for name in modules() if floor(name) == LAYERS.index(layer)]
    code = f"BLOCKED = {above!r}\n{BLOCKER}\n" + "".join(f"import {name}\n" for name in own)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr.strip().splitlines()[-1]


def test_the_blocker_blocks():
    code = f"BLOCKED = ['must_cli.commands']\n{BLOCKER}\nimport must_cli.commands.adapt.command\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "above this floor" in run.stderr


# Not timm.data.auto_augment: open_clip itself imports it.
TRAINING_CODE = ("must_cli.training", "must_cli.commands.adapt", "must_cli.method.engine", "must_cli.method.losses",
                 "must_cli.method.schedule", "must_cli.method.masking", "must_cli.method.views",
                 "must_cli.files.checkpoint", "must_cli.files.cache")


@pytest.mark.slow
@pytest.mark.parametrize("module", ["must_cli.commands.predict", "must_cli.commands.evaluate",
                                    "must_cli.commands.export"])
def test_inference_commands_load_no_training_code(module):
    """Listed from sys.modules after the import: nothing of training, its losses, masks, views or checkpoints."""
    code = (f"import sys, {module}; "
            f"print(sorted(m for m in sys.modules if m.startswith({TRAINING_CODE!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_no_import_circle_between_package_modules():
    graph = {name: {t for t in imports(path) if t in modules() and t != name} for name, path in modules().items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(name for name in graph if name != "must_cli" and reaches(name, name, set()))
    assert circles == []


def effective(lines: list[str]) -> int:
    """Lines as if wrapped at WIDTH characters: a packed line counts as the lines it would take."""
    return sum(max(1, math.ceil(len(line) / WIDTH)) for line in lines)


def test_effective_lines_count_packing():
    assert effective(["x" * 100, "", "y" * 101, "z" * 250]) == 1 + 1 + 2 + 3


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        source = path.read_text().splitlines()
        if effective(source) > MODULE_LIMIT:
            too_long.append(f"{name}: {effective(source)} lines")
        for node in ast.walk(ast.parse("\n".join(source))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = effective(source[node.lineno - 1:node.end_lineno])
                if size > FUNCTION_LIMIT:
                    too_long.append(f"{name}.{node.name}: {size} lines")
    assert too_long == []


def test_no_module_reads_its_own_locals():
    """Flags travel as named, typed options (record.AdaptOptions), never as a dict(locals()) no tool can follow."""
    calls = [f"{path.name}:{node.lineno}" for path in modules().values()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("locals", "vars")
             and (node.func.id == "locals" or not node.args)]
    assert calls == []


def test_no_module_imports_another_modules_private_names():
    """A leading underscore means "this module's own": benchmarks and package modules use public names only."""
    sources = list(modules().values()) + sorted((PACKAGE.parent / "benchmarks").glob("*.py"))
    private = [f"{path.name}:{node.lineno} {alias.name}" for path in sources
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("must_cli")
               for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
    assert private == []


def test_every_subpackage_is_shipped():
    """pyproject.toml lists packages by hand: a new floor or command package left out would be missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert listed == found
