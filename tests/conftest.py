"""Shared fixtures: composed configs (as the lightning-hydra-template does), entry points run in process and
tiny trained runs. The helpers themselves live in tests/helpers/ (imported here on use: collecting a test file
that needs neither torch nor Lightning stays fast)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def compose_train(tmp_path: Path):
    from helpers.config import compose_config

    return lambda *overrides: compose_config("train", list(overrides), tmp_path)


@pytest.fixture
def in_process():
    """For a test that calls an entry point's function (train.train(cfg), predict.main(argv), ...) itself:
    the process-wide state it changes is restored afterwards (helpers.cli.restored_globals)."""
    from helpers.cli import restored_globals

    with restored_globals():
        yield


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """model -> a tiny trained run of vit / audio / video / translator (helpers.runs.TinyRuns), trained once
    per session on first use: test_maps and test_app share them."""
    from helpers.runs import TinyRuns

    return TinyRuns(tmp_path_factory.mktemp("tiny_runs"))
