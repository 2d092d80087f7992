"""Protein sequences from FASTA files (a minimal reader; the data module for training lives beside it at merge).

    records = read_fasta("proteins.fasta")   # [(name, sequence), ...], in file order
"""

from __future__ import annotations

from pathlib import Path

from data.text import read_text_file
from utils.errors import MissingFileError, UserError


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """(name, sequence) of every record of a FASTA file: the name is the header's first word, the sequence its
    lines joined (white space dropped, letters as written). A missing file, one that is not UTF-8, and one with
    no record (empty, or no '>' header line) raise a UserError naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"FASTA file {str(p)!r} does not exist; expected '>name' lines each followed by "
                               f"a sequence")
    records: list[tuple[str, list[str]]] = []
    for line in read_text_file(p, "FASTA").splitlines():
        if line.startswith(">"):
            words = line[1:].split()
            records.append((words[0] if words else f"record_{len(records) + 1}", []))
        elif line.strip() and records:
            records[-1][1].append("".join(line.split()))
        elif line.strip():
            raise UserError(f"{p}: sequence text before the first '>' header line; expected FASTA "
                            f"('>name' lines each followed by a sequence)")
    if not records:
        raise UserError(f"{p} holds no FASTA records (it is empty or has no '>name' header line); expected "
                        f"'>name' lines each followed by a sequence")
    return [(name, "".join(lines)) for name, lines in records]


__all__ = ["read_fasta"]
