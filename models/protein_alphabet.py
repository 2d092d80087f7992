"""Protein alphabets: ESM's 33 tokens (fair-esm, ESM-2) and AntiBERTy's 25, with their special tokens.

A sequence is one-letter residue codes; `encode` checks it (upper-cases it, drops white space, refuses a
FASTA header or a letter the alphabet has no token for, naming it) and frames it as the model was trained:
`<cls> residues <eos>` (ESM), `[CLS] residues [SEP]` (AntiBERTy, BERT's framing).
"""

from __future__ import annotations

from dataclasses import dataclass

# ESM's order (esm.data.Alphabet for ESM-1b / ESM-2): 4 specials, the 25 residue letters as ESM lists them,
# the gap symbols '.' and '-', a null token and the mask (33 in all; id 32 = <mask>).
ESM_TOKENS = ("<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>")
ANTIBERTY_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY")
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"  # the 20 amino acids every alphabet has
ALPHABETS = ("esm", "antiberty")


class SequenceError(ValueError):
    """A protein sequence the alphabet cannot encode; the message names the offending text."""


@dataclass(frozen=True)
class Alphabet:
    """Tokens of one protein model, and its special ids (`cls` starts, `eos` ends every sequence)."""

    name: str
    tokens: tuple[str, ...]
    cls: int
    pad: int
    eos: int
    unk: int
    mask: int

    @classmethod
    def named(cls, name: str) -> Alphabet:
        """"esm" (33 tokens) or "antiberty" (25)."""
        if name == "esm":
            return cls("esm", ESM_TOKENS, cls=0, pad=1, eos=2, unk=3, mask=32)
        if name == "antiberty":
            return cls("antiberty", ANTIBERTY_TOKENS, cls=2, pad=0, eos=3, unk=1, mask=4)
        raise ValueError(f"alphabet={name!r}: expected one of {', '.join(ALPHABETS)}")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def letters(self) -> str:
        """The one-letter residue codes this alphabet has a token for."""
        return "".join(t for t in self.tokens if len(t) == 1 and t.isalpha())

    @property
    def residue_ids(self) -> list[int]:
        """Ids of the 20 standard amino acids (what a masked position may be replaced with in training)."""
        return [self.tokens.index(a) for a in STANDARD_RESIDUES]

    def clean(self, text: str) -> str:
        """The residues of `text`: white space dropped, upper-cased; a ValueError naming the first letter the
        alphabet lacks (with its 1-based position), a FASTA header, or an empty sequence."""
        if text.lstrip().startswith(">"):
            raise SequenceError(f"{_short(text)!r} starts with '>', a FASTA header: give the sequence, or the "
                                f"FASTA file's path")
        seq = "".join(text.split()).upper()
        if not seq:
            raise SequenceError("the sequence is empty: expected one-letter residue codes (e.g. MKTAYIAKQR)")
        known = set(self.letters)
        for i, letter in enumerate(seq):
            if letter not in known:
                raise SequenceError(f"{letter!r} at residue {i + 1} of {_short(seq)!r} is not a residue letter "
                                    f"of the {self.name} alphabet: expected one of {self.letters}")
        return seq

    def encode(self, text: str) -> list[int]:
        """`<cls>` + one id per residue + `<eos>` (after `clean`)."""
        index = {t: i for i, t in enumerate(self.tokens)}
        return [self.cls, *(index[a] for a in self.clean(text)), self.eos]

    def decode(self, ids: list[int]) -> str:
        """Residue letters of ids, specials dropped (the mask shown as '#')."""
        return "".join("#" if i == self.mask else self.tokens[i] for i in ids
                       if i == self.mask or len(self.tokens[i]) == 1)


def _short(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = ["ALPHABETS", "Alphabet", "SequenceError", "STANDARD_RESIDUES"]
