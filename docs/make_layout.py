"""Write docs/layout.md from the code: the zoo's modules, each with its docstring's first line.

    python docs/make_layout.py

tests/test_layout.py fails while docs/layout.md differs from what this script writes, so a module
that is added, moved or re-described shows there. Standard library only: it reads the sources and
imports none of them.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "layout.md"
# Lowest layer first; utils/errors.py sits below them all. A package not in the tree is left out.
LAYERS = ("models", "data", "training", "utils", "inference", "viz")
LEAF = "utils/errors.py"
NAV = ("[README](../README.md) · [all pages](../README.md#pages) · "
       "[The attention core](attention.md)")
WIDTH = 100


def summary(path: Path) -> str:
    """The docstring's first line, ' …' when its paragraph goes on, escaped for a table cell."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    if not doc:
        return "(no docstring)"
    lines = doc.splitlines()
    cut = len(lines) > 1 and lines[1].strip() != ""
    return (lines[0].strip() + (" …" if cut else "")).replace("|", "\\|")


def modules(package: Path) -> list[Path]:
    """A package's modules, its sub-packages' included; its own __init__ describes the package."""
    hidden = (".", "__pycache__")
    found = [p for p in package.rglob("*.py")
             if not any(part.startswith(hidden) for part in p.relative_to(ROOT).parts)]
    found = [p for p in found if p != package / "__init__.py"]
    return sorted(found, key=lambda p: p.relative_to(ROOT).parts)


def table(paths: list[Path]) -> list[str]:
    rows = ["| module | what it holds |", "| --- | --- |"]
    for path in paths:
        name = path.relative_to(ROOT).as_posix()
        rows.append(f"| [`{name}`](../{name}) | {summary(path)} |")
    return rows


def render() -> str:
    packages = [ROOT / name for name in LAYERS if (ROOT / name).is_dir()]
    order = " -> ".join([f"`{LEAF}`", *(f"`{p.name}/`" for p in packages), "entry points"])
    intro = (f"The layers, lowest first: {order}. Each layer is meant to import only from the "
             f"layers before it; `{LEAF}` is a leaf that every layer may import. Each table lists "
             "a package's modules with the first line of their docstring (` …` where the "
             "sentence goes on). Not listed: `configs/` (Hydra configs), `docs/`, `tests/`, "
             "`bench/`.")
    note = ("<!-- Written by docs/make_layout.py from the modules' docstrings: edit those, then "
            "run `python docs/make_layout.py`. -->")
    lines = [NAV, "", "# Code layout", "", textwrap.fill(note, WIDTH), "",
             textwrap.fill(intro, WIDTH)]
    for package in packages:
        lines += ["", f"## `{package.name}/`", ""]
        if (package / "__init__.py").is_file():
            lines += [textwrap.fill(summary(package / "__init__.py"), WIDTH), ""]
        lines += table(modules(package))
    lines += ["", "## Entry points", "", "Command lines over the packages above.", "",
              *table(sorted(ROOT.glob("*.py")))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
