"""docs/layout.md is what docs/make_layout.py writes from the code today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_layout():
    spec = importlib.util.spec_from_file_location("make_layout", ROOT / "docs" / "make_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_page_matches_the_code():
    written = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    assert written == make_layout().render(), (
        "docs/layout.md is out of date (a module was added, moved or re-described): "
        "run `python docs/make_layout.py`")


def test_every_module_has_a_row(tmp_path, monkeypatch):
    """A new module in a package or a new layer package appears without editing the script."""
    layout = make_layout()
    for name in ("models/new_family.py", "training/__init__.py", "training/schedules.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('"""One line.\n\nMore."""\n')
    (tmp_path / "train.py").write_text('"""Train.\nstill the first paragraph."""\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    monkeypatch.setattr(layout, "ROOT", tmp_path)
    page = layout.render()
    assert "| [`models/new_family.py`](../models/new_family.py) | One line. |" in page
    assert "`utils/errors.py` -> `models/` -> `training/` -> entry points" in page
    assert "| [`train.py`](../train.py) | Train. … |" in page
    assert "tests/test_x.py" not in page and "(no docstring)" not in page
