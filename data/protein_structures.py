"""Real protein structures: ProMod3's structure database (Debian promod3-data) -> chains, contact maps, MLM batches.

The file (`/usr/share/promod3/loop_data/structure_db.dat`, ProMod3 3.2.1's portable binary format,
little-endian; 21,119 PDB chains, 4,561,225 residues) is read with numpy in about a second:

* a fixed 77-byte header (magic 1234, version 2, the sizes of ProMod3's types), checked byte for byte;
* `u64` chain count at 0x4d, then one table-of-contents record per chain: `u32 n, n bytes PDB id, u32 n,
  n bytes chain name, u32 offset, u16 size, u16 first residue number, 3 x f32 shift`;
* `u64 N` and the N one-letter residue codes of all chains, back to back (chain i at `offset`, `size` long);
* `u64 N` and N x 12 int16: N / CA / C / O x (x, y, z) per residue in units of 0.01 A, stored minus the
  chain's `shift` (ProMod3 moves each chain to its bounding box's corner so that it fits int16), added back.

Every count and offset is checked against the others (the offsets tile the residues, all blocks count the
same N, the file is long enough): a file that does not match is one FileFormatError.

Each entry is one connected stretch of a chain with its whole backbone (ProMod3 adds only residues with
N, CA, C and O): no residue lacks coordinates (checked: no all-zero atom; consecutive CA-CA <= 5.1 A), so
nothing fake can enter a contact map. A `Chain` built elsewhere may mark a missing residue with NaN
coordinates: it then has no contacts at all (`Chain.contacts`).

`ProteinStructuresDataModule` splits the chains by homology (data/protein_split.py, as the sequence data)
and gives the same masked-LM batches as data/protein_sequences.py, plus `chains(split)`: whole chains with
coordinates for the contact evaluation. `select="antibody"` keeps antibody variable domains (ANTIBODY_RULE).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.protein_sequences import ProteinBatches
from models.checks import require_choice, require_int
from models.protein_geometry import CONTACT_ANGSTROM, contact_map, virtual_cb
from utils.errors import FileFormatError, MissingDataError, MissingFileError, UserError

STRUCTURE_DB = Path("/usr/share/promod3/loop_data/structure_db.dat")
# The header of promod3-data 3.2.1 (bookworm): magic 1234, version 2, then sizes of ProMod3's types and flags
HEADER = bytes.fromhex("d2040000020000000400000004000000020000000800000002000000060000005800000028000000"
                       "180000000600000004000000010000000000803f01010001000000000000000100ffffffff")
SELECTIONS = ("all", "antibody")
# Antibody variable domains by conserved motifs (Kabat numbering in brackets): heavy, the Cys (22) 9-16
# residues before W[VIF]RQ (36-39), a [YF]xC (90-92) 40-70 residues after it, then the J region's WGxG
# (103-106) 3-30 residues on; light (kappa / lambda), the Cys (23) 9-17 residues before W[YF]QQ (35-38),
# [YF]xC (86-88) 40-70 after, the J region's FGxG (98-101) 3-20 on.
ANTIBODY_RULE = {"heavy": re.compile(r"C.{9,16}W[VIF]RQ.{40,70}[YF].C.{3,30}WG.G"),
                 "light": re.compile(r"C.{9,17}W[YF]QQ.{40,70}[YF].C.{3,20}FG.G")}


@dataclass(frozen=True, eq=False)
class Chain:
    """One protein chain: `name` "<PDB id>.<chain>" (e.g. "12AS.A"), its residues, and backbone coordinates
    `coords` (L, 4, 3) float32, N / CA / C / O in Angstrom."""

    name: str
    sequence: str
    coords: np.ndarray

    @property
    def cb(self) -> np.ndarray:
        """(L, 3) virtual C-beta positions (ideal geometry from N, CA, C; glycine too, as Rao et al.)."""
        return virtual_cb(self.coords[:, 0], self.coords[:, 1], self.coords[:, 2])

    def contacts(self, threshold: float = CONTACT_ANGSTROM) -> np.ndarray:
        """(L, L) bool: C-beta distance < `threshold` A. A residue with non-finite coordinates (missing) has no
        contact, not even with itself."""
        cb = self.cb
        known = np.isfinite(cb).all(axis=1)
        return contact_map(cb, threshold) & known[:, None] & known[None, :]


@dataclass(frozen=True, eq=False)
class StructureDB:
    """The whole database in arrays: chain i is residues offsets[i] : offsets[i] + sizes[i]."""

    path: Path
    names: list[str]
    offsets: np.ndarray  # (n,) int64
    sizes: np.ndarray  # (n,) int64
    first_residue: np.ndarray  # (n,) residue number of each stretch's first residue in its PDB chain
    shifts: np.ndarray  # (n, 3) float32
    residues: bytes  # all one-letter codes
    xyz: np.ndarray  # (N, 4, 3) int16, units of 0.01 A, minus the chain's shift

    def __len__(self) -> int:
        return len(self.names)

    def sequence(self, i: int) -> str:
        return self.residues[self.offsets[i]:self.offsets[i] + self.sizes[i]].decode("ascii")

    def chain(self, i: int) -> Chain:
        xyz = self.xyz[self.offsets[i]:self.offsets[i] + self.sizes[i]]
        coords = (xyz.astype(np.float32) * np.float32(0.01) + self.shifts[i]).astype(np.float32)
        return Chain(self.names[i], self.sequence(i), coords)


def read_structure_db(path: str | Path | None = None) -> StructureDB:
    """ProMod3's structure database (null: Debian's promod3-data; a folder: its structure_db.dat)."""
    p = Path(path).expanduser() if path is not None else STRUCTURE_DB
    if p.is_dir():
        p = p / "structure_db.dat"
    if not p.is_file():
        if path is None:
            raise MissingDataError(f"the ProMod3 structure database {p} is not installed: apt-get install "
                                   f"promod3-data, or give data.path=<structure_db.dat>")
        raise MissingFileError(f"structure database {str(p)!r} does not exist; expected ProMod3's structure_db.dat "
                               f"(Debian promod3-data)")
    size = p.stat().st_size

    def damaged(what: str) -> FileFormatError:
        return FileFormatError(f"structure database {p}: {what}; expected ProMod3 3.2.1's structure_db.dat "
                               f"(Debian promod3-data)")

    with p.open("rb") as f:
        head = f.read(len(HEADER) + 8)
        if head[:len(HEADER)] != HEADER:
            raise damaged("its header does not match (another file, version or byte order)")
        (count,) = struct.unpack_from("<Q", head, len(HEADER))
        if not 0 < count < size // 33:  # a record takes >= 33 bytes
            raise damaged(f"chain count {count} does not fit a file of {size} bytes")
        toc = f.read(min(size, count * 64))  # a record is 33 bytes with 4-letter ids and 1-letter chain names
    names, fields, at = [], [], 0
    try:
        for _ in range(count):
            (n,) = struct.unpack_from("<I", toc, at)
            pdb = toc[at + 4:at + 4 + n].decode("ascii")
            at += 4 + n
            (n,) = struct.unpack_from("<I", toc, at)
            chain = toc[at + 4:at + 4 + n].decode("ascii")
            at += 4 + n
            fields.append(struct.unpack_from("<IHH3f", toc, at))
            at += 20
            names.append(f"{pdb}.{chain}")
    except (struct.error, UnicodeDecodeError):
        raise damaged(f"its table of contents ends early or holds non-ASCII names (chain {len(names) + 1} of "
                      f"{count})") from None
    table = np.array(fields, dtype=np.float64)
    offsets, sizes, first = (table[:, k].astype(np.int64) for k in range(3))
    total = int(sizes.sum())
    if offsets[0] != 0 or not np.array_equal(offsets[1:], np.cumsum(sizes)[:-1]) or (sizes < 1).any():
        raise damaged("the chains' offsets and sizes do not tile the residues")
    seq_at = len(HEADER) + 8 + at
    coord_at = seq_at + 8 + total
    if size < coord_at + 8 + 24 * total:
        raise damaged(f"it ends at byte {size}, before its coordinates do ({coord_at + 8 + 24 * total})")
    with p.open("rb") as f:
        f.seek(seq_at)
        n_seq = struct.unpack("<Q", f.read(8))[0]
        residues = f.read(total)
        n_xyz = struct.unpack("<Q", f.read(8))[0]
    if n_seq != total or n_xyz != total:
        raise damaged(f"its blocks count {n_seq} residues and {n_xyz} coordinates, the chains {total}")
    if not residues.isalpha() or not residues.isupper():
        raise damaged("its residue codes are not upper-case letters")
    xyz = np.fromfile(p, dtype="<i2", count=12 * total, offset=coord_at + 8).reshape(total, 4, 3)
    return StructureDB(path=p, names=names, offsets=offsets, sizes=sizes, first_residue=first,
                       shifts=table[:, 3:6].astype(np.float32), residues=residues, xyz=xyz)


def antibody_kind(sequence: str) -> str | None:
    """"heavy" / "light" when the sequence holds an antibody variable domain by ANTIBODY_RULE, else None."""
    return next((kind for kind, rule in ANTIBODY_RULE.items() if rule.search(sequence)), None)


class ProteinStructuresDataModule(ProteinBatches):
    """PDB chains of ProMod3's structure database -> masked-LM batches (B, T) and held-out `chains(split)`.

    Args mirror configs/data/protein_structures.yaml: `dataset` the config's name; `path` the database
    (null: Debian's promod3-data); `min_len` the shortest chain kept; `max_len` residues per MLM sequence
    (longer ones cropped; `chains()` gives whole chains); `identity` the split's homology threshold;
    `max_chains` the first N chains kept (null: all); `select` all | antibody; `root` where the split is
    cached (`<root>/protein_splits`).
    """

    what = "chains"

    def __init__(
        self,
        *,
        dataset: str = "protein_structures",
        path: str | None = None,
        alphabet: str = "esm",
        min_len: int = 50,
        max_len: int = 1024,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        val_fraction: float = 0.05,
        test_fraction: float = 0.1,
        identity: float = 0.3,
        max_chains: int | None = None,
        select: str = "all",
        root: str = "datasets",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(alphabet=alphabet, max_len=max_len, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         val_fraction=val_fraction, test_fraction=test_fraction, identity=identity, root=root,
                         num_workers=num_workers, seed=seed)
        require_int("min_len", min_len)
        require_int("max_chains", max_chains, at_least=3, optional=True, note=" (train, val and test)")
        require_choice("select", select, SELECTIONS)
        self.dataset = dataset  # the config's name (data=protein_structures), for messages
        self.path, self.min_len, self.max_chains, self.select = path, min_len, max_chains, select
        # Antibody variable domains are all homologues of each other (shared frameworks, mostly > 50 % identity):
        # step 3 of the split rule would leave no val / test chain, so they are split by whole clusters only.
        self.search = select != "antibody"
        self.db: StructureDB | None = None
        self._index: list[int] = []  # database index of each kept chain

    def _load(self) -> None:
        db = read_structure_db(self.path)
        keep = [i for i in range(len(db)) if db.sizes[i] >= self.min_len]
        if self.select == "antibody":
            keep = [i for i in keep if antibody_kind(db.sequence(i))]
        if self.max_chains is not None:
            keep = keep[: self.max_chains]
        if len(keep) < 3:
            raise UserError(f"data={self.dataset}: {len(keep)} chain(s) of {db.path} pass min_len="
                            f"{self.min_len}, select={self.select}; expected at least 3 (train, val and test)")
        letters = set(self.alphabet.letters)
        bad = next((i for i in keep if set(db.sequence(i)) - letters), None)
        if bad is not None:
            raise UserError(f"data={self.dataset}: chain {db.names[bad]} holds letters "
                            f"{''.join(sorted(set(db.sequence(bad)) - letters))} that the {self.alphabet.name} "
                            f"alphabet lacks")
        self.db, self._index = db, keep
        self._names = [db.names[i] for i in keep]
        self._seqs = [db.sequence(i) for i in keep]
        self.split = self._homology_split()

    def chains(self, split: str = "test") -> list[Chain]:
        """The split's chains, whole, with coordinates (for the contact evaluation)."""
        require_choice("split", split, ("train", "val", "test"))
        indices = self._ready().indices(split)
        assert self.db is not None
        return [self.db.chain(self._index[k]) for k in indices]


__all__ = ["ANTIBODY_RULE", "Chain", "ProteinStructuresDataModule", "STRUCTURE_DB", "StructureDB",
           "antibody_kind", "read_structure_db"]
