"""Bad input to protein training (docs/errors.md, Proteins): refused in one line before a step runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.runs import train_in_process
from utils.errors import UserError


def test_a_model_and_data_of_different_alphabets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model.net.alphabet=esm but data.alphabet=antiberty"):
        train_in_process("protein", tmp_path, "data.alphabet=antiberty")
