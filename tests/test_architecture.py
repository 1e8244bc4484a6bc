"""The layout rules of docs/architecture.md, checked: no import circle, predict/eval never load the
training orchestrator, and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "must_cli"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["must_cli.commands.predict", "must_cli.commands.evaluate", "must_cli.commands.export"])
def test_inference_commands_do_not_load_training(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('must_cli.commands.adapt', 'must_cli.training.builder', 'must_cli.training.trainer', 'must_cli.method.engine') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_no_import_circle_between_package_modules():
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {node.module.split(".")[1] for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.module
                            and node.module.startswith("must_cli.")}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, set()))
    assert circles == []


def test_modules_and_functions_stay_small():
    too_long = []
    for path in PACKAGE.glob("*.py"):
        source = path.read_text()
        if len(source.splitlines()) > 350:
            too_long.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_no_module_reads_its_own_locals():
    """Flags travel as named, typed options (record.AdaptOptions), never as a dict(locals()) no tool can follow."""
    calls = [f"{path.name}:{node.lineno}" for path in PACKAGE.glob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("locals", "vars")
             and (node.func.id == "locals" or not node.args)]
    assert calls == []
