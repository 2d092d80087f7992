"""The layer order (pyproject.toml [tool.importlinter]): imports only look down, and no file circles.

utils/errors -> models -> data -> training -> utils -> inference -> viz -> entry points.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "data", "training", "utils", "inference", "viz")
ENTRY_POINTS = ("train", "evaluate", "predict", "export", "app")
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root)},
                          timeout=120)


def test_the_import_contracts_are_kept() -> None:
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    vit = tmp_path / "models" / "vit.py"
    vit.write_text(vit.read_text() + "\n\ndef _draw():\n    from viz import plots  # a network reaching up\n")
    proc = lint(tmp_path)
    assert proc.returncode == 1
    assert "Layers only look down BROKEN" in proc.stdout
    assert "models.vit -> viz.plots" in proc.stdout


def test_no_package_imports_an_entry_point() -> None:
    upward = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                upward += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ENTRY_POINTS]
    assert not upward
