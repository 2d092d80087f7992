"""Proteins in predict: sequences from text, FASTA or PDB files, the pseudo-perplexity, the top contacts and
the contact head's weights.

    proteins = read_proteins(["MKTAYIAKQR...", "seqs.fasta", "1ubi.pdb"], net.alphabet, notes)
    ppl = pseudo_perplexity(net, ids)              # mask each residue once, exp of the mean NLL
    pairs = top_contacts(net.contacts(ids)[0], k=L // 5, min_separation=6)

A PDB file gives its first chain's residues that have N, CA and C atoms, and so its true contact map
(models.protein_geometry: virtual C-beta closer than 8 A). Bad input raises a UserError naming the text or
file; odd but usable input (lower case, spaces) runs and is said in `notes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from data.protein_sequences import read_fasta
from inference.inputs import FASTA_EXTENSIONS, PDB_EXTENSIONS, file_modality
from models.protein_alphabet import Alphabet, SequenceError
from models.protein_geometry import contact_map, virtual_cb
from utils.errors import FileFormatError, MissingFileError, UserError

TAKES = (f"a protein model takes a sequence, a FASTA file ({', '.join(FASTA_EXTENSIONS)}) or a PDB file "
         f"({', '.join(PDB_EXTENSIONS)})")
MIN_SEPARATION = 6  # contacts printed: residues at least this far apart in the sequence (Rao et al.'s short range)
CONTACT_HEAD_FILE = "contact_head.safetensors"  # what `evaluate.py contacts=true` writes
FIT_COMMAND = "python evaluate.py {key}={run} contacts=true data=protein_structures"

TOKENS_PER_BATCH = 16384  # masked copies run together in pseudo_perplexity: at most this many tokens a pass
THREE_TO_ONE = {"ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E", "GLY": "G",
                "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F", "PRO": "P", "SER": "S",
                "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "SEC": "U", "PYL": "O", "MSE": "M"}


@dataclass
class ProteinInput:
    """One protein to predict: a name (for lines, pictures and pages), its residues (clean upper-case letters)
    and, from a structure file, the true contact map (L, L) bool."""

    name: str
    sequence: str
    true_contacts: np.ndarray | None = None


def _short(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def clean_sequence(alphabet: Alphabet, text: str, where: str, notes: list[str] | None) -> str:
    """The residues of `text` (alphabet.clean), its errors as UserErrors naming `where`; lower case and white
    space are fixed and said."""
    try:
        seq = alphabet.clean(text)
    except SequenceError as err:
        raise UserError(f"{where}: {err}" if where else str(err)) from None
    changed = [what for what, odd in (("upper-cased", any(c.islower() for c in text)),
                                      ("white space dropped", any(c.isspace() for c in text.strip())))
               if odd]
    if changed and notes is not None:
        notes.append(f"{where or repr(_short(text))}: {' and '.join(changed)} ({len(seq)} residues read)")
    return seq


def read_pdb(path: Path) -> tuple[str, np.ndarray]:
    """(one-letter residues, (L, L) true contacts) of the first chain of a PDB file: its residues with N, CA and C
    atoms (others, water and ligands, skipped). A file Biopython cannot read, or one without such residues, is
    a UserError naming it."""
    import warnings

    from Bio.PDB import PDBParser
    from Bio.PDB.PDBExceptions import PDBConstructionWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PDBConstructionWarning)
            structure = PDBParser(QUIET=True).get_structure(path.stem, str(path))
        model = next(iter(structure))
        chain = next(iter(model))
    except StopIteration:
        raise FileFormatError(f"{path} holds no chain (no ATOM records); expected a PDB file of a protein") from None
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise FileFormatError(f"cannot read {path} as a PDB file ({type(err).__name__}: {err})") from None
    letters, n, ca, c = [], [], [], []
    for residue in chain:
        name = residue.get_resname().upper()
        if residue.id[0] not in (" ",) and name != "MSE":  # waters and ligands are HETATM
            continue
        if not all(atom in residue for atom in ("N", "CA", "C")):
            continue
        letters.append(THREE_TO_ONE.get(name, "X"))
        n.append(residue["N"].coord), ca.append(residue["CA"].coord), c.append(residue["C"].coord)
    if not letters:
        raise FileFormatError(f"{path}: chain {chain.id} has no residue with N, CA and C atoms (backbone "
                              f"coordinates); expected a PDB file with full backbones")
    cb = virtual_cb(*(np.asarray(x, dtype=np.float64) for x in (n, ca, c)))
    return "".join(letters), contact_map(cb)


def read_proteins(items: list[str], alphabet: Alphabet, notes: list[str] | None = None) -> list[ProteinInput]:
    """The proteins named on a command line: a sequence, a FASTA file (every record) or a PDB file (its first
    chain, with its true contacts)."""
    proteins = []
    for k, item in enumerate(items):
        path = Path(item).expanduser()
        suffix = path.suffix.lower()
        try:
            is_file, is_dir = path.is_file(), bool(item.strip()) and path.is_dir()  # Path('') is '.'
        except OSError:  # a sequence longer than a file name may be
            is_file = is_dir = False
        if is_dir:
            raise UserError(f"{item!r} is a folder; {TAKES}")
        found = file_modality(path) if is_file else None
        if found is not None:  # a wav, a picture, a clip: not read as FASTA text
            raise FileFormatError(f"{item} is {'an' if found[0] in 'aeiou' else 'a'} {found} file, but {TAKES}")
        if suffix in PDB_EXTENSIONS or (is_file and suffix not in FASTA_EXTENSIONS and _is_pdb(path)):
            if not is_file:
                raise MissingFileError(f"PDB file {item!r} does not exist; expected a structure file (.pdb)")
            seq, true = read_pdb(path)
            proteins.append(ProteinInput(path.stem, clean_sequence(alphabet, seq, str(path), notes), true))
        elif suffix in FASTA_EXTENSIONS or is_file:
            for name, seq in read_fasta(path):
                proteins.append(ProteinInput(name, clean_sequence(alphabet, seq, f"{path} record {name!r}", notes)))
        else:
            proteins.append(ProteinInput(f"sequence_{k + 1}", clean_sequence(alphabet, item, "", notes)))
    return proteins


def _is_pdb(path: Path) -> bool:
    """Whether a file without a known extension starts as a PDB file does (HEADER / ATOM / ... records)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head.rstrip().decode("ascii", "replace") in ("HEADER", "ATOM", "HETATM", "MODEL", "REMARK", "CRYST1")


def check_length(net: nn.Module, protein: ProteinInput, notes: list[str] | None) -> None:
    """A protein longer than the model was trained on: learned positions refuse it (their table ends), rotary
    runs it (said; with attn_window, each residue sees only those less than W away)."""
    tokens, limit = len(protein.sequence) + 2, int(net.max_len)
    if tokens <= limit:
        return
    residues = f"{protein.name}: {len(protein.sequence)} residues ({tokens} tokens with <cls> and <eos>)"
    if net.pos_embed is not None:
        raise UserError(f"{residues} is longer than this model's max_len={limit} tokens ({limit - 2} residues): "
                        f"its learned position table ends there; give at most {limit - 2} residues (e.g. a domain)")
    window = net.blocks[0].attn.window if hasattr(net.blocks[0].attn, "window") else None
    if notes is not None:
        seen = (f"; attn_window={window}: each residue sees those less than {window} away, so the maps are zero "
                f"farther out and contacts farther apart rest on APC's background only" if window else "")
        notes.append(f"{residues} is longer than the {limit} tokens the model was trained on: run with its rotary "
                     f"positions (no table limit), the maps cover every residue{seen}")


@torch.no_grad()
def pseudo_perplexity(net: nn.Module, ids: Tensor, tokens_per_batch: int = TOKENS_PER_BATCH) -> float:
    """exp of the mean negative log-likelihood of each residue given the others: (1, T) ids framed by <cls> /
    <eos>, each residue masked once (T - 2 masked copies, run in batches of at most tokens_per_batch tokens)."""
    alphabet, T = net.alphabet, ids.shape[1]
    positions = torch.arange(1, T - 1, device=ids.device)
    per_batch = max(1, tokens_per_batch // T)
    nll = torch.zeros((), dtype=torch.float64)
    for chunk in positions.split(per_batch):
        copies = ids.repeat(len(chunk), 1)
        rows = torch.arange(len(chunk), device=ids.device)
        copies[rows, chunk] = alphabet.mask
        logp = net(copies).float().log_softmax(-1)[rows, chunk]  # (n, V): the masked position's distribution
        nll -= logp.gather(1, ids[0, chunk][:, None]).sum().double().cpu()
    return float(torch.exp(nll / len(positions)))


def top_contacts(probs: Tensor, k: int, min_separation: int = MIN_SEPARATION) -> list[tuple[int, int, float]]:
    """The k most probable contacts (i, j, p) with i < j, j - i >= min_separation, 1-based residue numbers;
    probs (L, L) symmetric. Ties keep the earlier pair."""
    L = probs.shape[-1]
    i, j = torch.triu_indices(L, L, offset=min_separation)
    if k < 1 or i.numel() == 0:
        return []
    p = probs[i, j].float()
    order = torch.argsort(-p, stable=True)[:k]
    return [(int(i[o]) + 1, int(j[o]) + 1, float(p[o])) for o in order]


def predicted_contacts(p: object) -> list[tuple[int, int, float]]:
    """The contacts predict.py prints for a protein Prediction: its top L / 5 pairs at least MIN_SEPARATION
    apart (none when the contact head is not fitted)."""
    probs = getattr(p, "contact_probs", None)
    return [] if probs is None else top_contacts(probs, probs.shape[-1] // 5)


def protein_lines(p: object) -> list[str]:
    """What predict.py prints for a protein Prediction (the app shows the same): its name and length, its
    pseudo-perplexity, then one `contact I J P` line per predicted contact (none when the head is not fitted)."""
    lines = [f"{p.name}: {len(p.input)} residues", f"pseudo-perplexity {p.perplexity:.3f}"]
    return lines + [f"contact {i} {j} {q:.3f}" for i, j, q in predicted_contacts(p)]


def head_fitted(net: nn.Module) -> bool:
    """Whether the contact head holds fitted weights (an unfitted one is all zero: models/protein.py)."""
    head = net.contact_head
    return bool(head.weight.abs().sum() + head.bias.abs().sum() > 0)


def contact_head_file(source: object, given: Path | None) -> Path | None:
    """The contact_head.safetensors to use: the one given (--contact-head; a missing file is a UserError), else
    one beside the run: in the run directory or beside its checkpoint file; None when there is none."""
    if given is not None:
        if not Path(given).is_file():
            raise MissingFileError(f"--contact-head {given}: no such file; expected a {CONTACT_HEAD_FILE} "
                                   f"(written by {FIT_COMMAND.format(key='ckpt_path', run='<run>')})")
        return Path(given)
    # Only beside a run on disk: a folder (the run directory), or a checkpoint file (its folder and the run
    # directory above). A source such as pkg:antiberty or hf:... names no folder: the current directory's file,
    # if any, belongs to something else.
    path = Path(str(source))
    folders = [path] if path.is_dir() else [path.parent, path.parent.parent] if path.is_file() else []
    for folder in folders:
        if (folder / CONTACT_HEAD_FILE).is_file():
            return folder / CONTACT_HEAD_FILE
    return None


def load_contact_head(net: nn.Module, path: Path) -> None:
    """Put the weight / bias of a contact-head file into net.contact_head (keys `weight` and `bias`, with any
    prefix such as `contact_head.`); a file of another shape is a UserError naming both shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise FileFormatError(f"cannot read {path} as safetensors ({err})") from None
    head = net.contact_head
    found = {}
    for part in ("weight", "bias"):
        keys = [k for k in state if k == part or k.endswith("." + part)]
        if len(keys) != 1:
            raise FileFormatError(f"{path}: expected one '{part}' tensor of a contact head, found keys "
                                  f"{sorted(state)}")
        found[part] = state[keys[0]]
    for part, value in found.items():
        want = getattr(head, part).shape
        if value.numel() != want.numel():
            raise UserError(f"{path}: contact head {part} of shape {tuple(value.shape)}, but this model has "
                            f"{net.depth} layers x {net.num_heads} heads: expected {tuple(want)}")
    with torch.no_grad():
        head.weight.copy_(found["weight"].reshape(head.weight.shape))
        head.bias.copy_(found["bias"].reshape(head.bias.shape))


__all__ = ["ProteinInput", "check_length", "protein_lines", "contact_head_file", "head_fitted", "load_contact_head",
           "predicted_contacts", "pseudo_perplexity", "read_pdb", "read_proteins", "top_contacts"]
