"""The tokenizer a text data module carries: trained once on its training split, checked against the config's
vocab_size, stored in every checkpoint (Lightning saves the data module's state) and in the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from utils.errors import UserError


class CarriesTokenizer:
    """Mix into a LightningDataModule (before it) that sets `tokenizer` (None until trained or restored) and
    `expected_vocab` (the config's vocab_size, None when the tokenizer decides it), and defines
    `new_tokenizer()`: the one trained on its training split."""

    tokenizer: Tokenizer | None
    expected_vocab: int | None

    def new_tokenizer(self) -> Tokenizer:
        raise NotImplementedError

    def read_tokenizer(self, text: str) -> Tokenizer:
        """The tokenizer of a checkpoint's string."""
        return Tokenizer.from_str(text)

    def prepare_tokenizer(self) -> Tokenizer:
        """The tokenizer: restored from a checkpoint if one was loaded, else trained on the training split."""
        if self.tokenizer is None:
            self.tokenizer = self.new_tokenizer()
        size = self.tokenizer.get_vocab_size()
        if self.expected_vocab is not None and size != self.expected_vocab:
            raise UserError(f"the tokenizer has {size} tokens but the config says vocab_size={self.expected_vocab}; "
                            f"a model trained with another tokenizer cannot use this one")
        return self.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.prepare_tokenizer().get_vocab_size()

    def state_dict(self) -> dict[str, Any]:
        # Lightning stores this in every checkpoint: the tokenizer travels with the weights.
        return {"tokenizer": self.prepare_tokenizer().to_str()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokenizer = self.read_tokenizer(state["tokenizer"])

    def save_artifacts(self, run_dir: str | Path) -> None:
        """tokenizer.json in the run directory (the checkpoints carry their own copy)."""
        self.prepare_tokenizer().save(str(Path(run_dir) / "tokenizer.json"))
