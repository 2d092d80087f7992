"""Stand-ins for the protein structure data (data.protein_structures) and a protein run, for the contact tests:
chains of two antiparallel helices (contacts at every separation range), a data module of them, a checkpoint.

The fake follows the interface the real data module keeps: `Chain(name, sequence, coords (L, 4, 3) N/CA/C/O)`
with `.contacts(threshold)`, and a LightningDataModule with `modality = "protein"`, `.alphabet`, `.chains(split)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from models.protein import ProteinLM
from models.protein_alphabet import STANDARD_RESIDUES, Alphabet
from models.protein_geometry import contact_map, virtual_cb
from utils.checkpoint import CONFIG_KEY

HELIX_RISE, HELIX_TURN, HELIX_RADIUS = 1.5, np.deg2rad(100.0), 2.3  # alpha helix: A per residue, turn, CA radius
HELIX_GAP = 9.0  # A between the two helix axes of a hairpin (packed helices: about 8-10 A)


@dataclass
class Chain:
    """One chain of known structure (the data side's `Chain`): N, CA, C, O per residue."""

    name: str
    sequence: str
    coords: np.ndarray  # (L, 4, 3) float32

    def contacts(self, threshold: float = 8.0) -> np.ndarray:
        n, ca, c = (self.coords[:, k].astype(np.float64) for k in range(3))
        return contact_map(virtual_cb(n, ca, c), threshold)


def hairpin_coords(length: int, seed: int) -> np.ndarray:
    """(L, 4, 3) backbone of a helix going up and one coming back down beside it, slightly jittered; N and C
    placed on the way to the previous and next CA, O beside C (only N, CA, C make the virtual C-beta)."""
    rng = np.random.default_rng(seed)
    half = (length + 1) // 2
    k = np.arange(length)
    m = np.where(k < half, k, length - 1 - k)  # height step: up the first helix, down the second
    axis_x = np.where(k < half, 0.0, HELIX_GAP)
    angle = HELIX_TURN * k
    ca = np.stack([axis_x + HELIX_RADIUS * np.cos(angle), HELIX_RADIUS * np.sin(angle), HELIX_RISE * m], -1)
    ca = ca + rng.normal(0, 0.3, ca.shape)
    prev = np.concatenate([ca[:1] - (ca[1:2] - ca[:1]), ca[:-1]])
    nxt = np.concatenate([ca[1:], ca[-1:] + (ca[-1:] - ca[-2:-1])])
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    n, c = ca + 1.46 * unit(prev - ca), ca + 1.52 * unit(nxt - ca)
    o = c + 1.23 * unit(np.cross(n - ca, c - ca))
    return np.stack([n, ca, c, o], 1).astype(np.float32)


def hairpin_chain(name: str, length: int, seed: int, letters: str = STANDARD_RESIDUES) -> Chain:
    rng = np.random.default_rng(seed + 1000)
    return Chain(name, "".join(rng.choice(list(letters), length)), hairpin_coords(length, seed))


class FakeStructures(L.LightningDataModule):
    """`train` and `test` hairpin chains of `length` residues; `long_chain` > 0 puts one that long first in the
    test split, `odd_chain` one with a letter ESM's alphabet lacks ('J') first in the train split."""

    modality = "protein"

    def __init__(self, *, train: int = 4, test: int = 3, length: int = 40, long_chain: int = 0,
                 odd_chain: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.alphabet = Alphabet.named("esm")
        self.splits: dict[str, list[Chain]] = {
            "train": [hairpin_chain(f"train{i}", length, seed + i) for i in range(train)],
            "val": [],
            "test": [hairpin_chain(f"test{i}", length + 3 * i, seed + 100 + i) for i in range(test)],
        }
        if long_chain:
            self.splits["test"].insert(0, hairpin_chain("long0", long_chain, seed + 200))
        if odd_chain:
            odd = hairpin_chain("odd0", length, seed + 300)
            self.splits["train"].insert(0, Chain(odd.name, "J" + odd.sequence[1:], odd.coords))

    def chains(self, split: str) -> list[Chain]:
        return list(self.splits[split])


class NoStructures(L.LightningDataModule):
    """Protein data without structures (as protein_sequences is): no `chains`."""

    modality = "protein"

    def __init__(self, *, length: int = 40) -> None:
        super().__init__()
        self.length = length


class ProteinRunModule(L.LightningModule):
    """The least LightningModule a protein run's checkpoint needs: its network as `net`."""

    def __init__(self, net: torch.nn.Module, optimizer: Any = None) -> None:
        super().__init__()
        self.net = net


TINY_NET = {"dim": 16, "depth": 2, "num_heads": 2, "ffn_dim": 32, "max_len": 64}


def write_protein_run(path: Path, data: dict[str, Any], seed: int = 0, sharpen: float = 30.0, **net: Any) -> Path:
    """A checkpoint file of a random ProteinLM (TINY_NET, updated by `net`) whose run trained on `data`. Its
    query / key / value weights are multiplied by `sharpen`: a freshly initialised model attends almost uniformly
    (maps of 1e-4 spread), and a regression on such maps keeps no weight at all."""
    net_cfg = {"_target_": "models.protein.ProteinLM", **TINY_NET, **net}
    torch.manual_seed(seed)
    module = ProteinRunModule(ProteinLM(**{k: v for k, v in net_cfg.items() if k != "_target_"}))
    with torch.no_grad():
        for block in module.net.blocks:
            block.attn.qkv.weight.mul_(sharpen)
    cfg = {"model": {"_target_": f"{__name__}.ProteinRunModule", "net": net_cfg}, "data": data}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), CONFIG_KEY: OmegaConf.to_container(OmegaConf.create(cfg))}, path)
    return path


def data_configs(folder: Path) -> Path:
    """A Hydra config folder with data/fake_structures.yaml and data/no_structures.yaml, for
    `hydra.searchpath=[file://<folder>] data=fake_structures`."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, cls, extra in (("fake_structures", "FakeStructures", "train: 4\ntest: 3\nlength: 40\n"),
                             ("no_structures", "NoStructures", "")):
        (folder / "data" / f"{name}.yaml").write_text(f"_target_: {__name__}.{cls}\n{extra}")
    return folder


__all__ = ["Chain", "FakeStructures", "NoStructures", "ProteinRunModule", "TINY_NET", "data_configs",
           "hairpin_chain", "hairpin_coords", "write_protein_run"]
