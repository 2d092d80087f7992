"""Bad input to `evaluate.py contacts=true` (docs/errors.md, "Protein contacts"): one line naming the value and what
was expected, exit code 2; odd-but-usable chains run and say what was done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers.cli import command
from helpers.protein_fakes import data_configs, write_protein_run

FAKE = {"_target_": "helpers.protein_fakes.FakeStructures", "train": 4, "test": 3, "length": 40}


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint of a tiny protein run trained on fake structures, a config folder with data/fake_structures.yaml
    and data/no_structures.yaml)."""
    return write_protein_run(tmp_path / "run" / "checkpoints" / "last.ckpt", FAKE), data_configs(tmp_path / "cfgs")


def contacts(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """evaluate.py contacts=true <args> in this process, its own output folder."""
    out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
    return command("evaluate.py", "contacts=true", "threads=1", *args, f"hydra.run.dir={out}")


def test_contacts_of_a_model_without_contact_features_is_one_line(tmp_path: Path, run) -> None:
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                            depth=1, num_heads=2, num_classes=3)
    save_for_hf(vit.eval(), str(tmp_path / "vit"), safe_serialization=True)
    code, _, err = contacts(tmp_path, f"pretrained={tmp_path / 'vit'}", f"hydra.searchpath=[file://{run[1]}]",
                            "data=fake_structures")
    assert code == 2 and err == (
        f"error: contacts=true: pretrained={tmp_path / 'vit'} is a VisionTransformer, which has no contact features "
        "(attention maps over residues); expected a protein language model (model=protein, pretrained=pkg:antiberty)\n")


def test_contacts_on_data_without_structures_is_one_line(tmp_path: Path, run) -> None:
    ckpt, cfgs = run
    code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", f"hydra.searchpath=[file://{cfgs}]", "data=no_structures")
    assert code == 2 and err == ("error: contacts=true: data=no_structures (NoStructures) holds no structures (no "
                                 "chains with coordinates); give data=protein_structures\n")
    own = write_protein_run(tmp_path / "seqs" / "checkpoints" / "last.ckpt",
                            {"_target_": "helpers.protein_fakes.NoStructures"})
    code, _, err = contacts(tmp_path, f"ckpt_path={own}")
    assert code == 2 and err == ("error: contacts=true: the run's own data (NoStructures) holds no structures (no "
                                 "chains with coordinates); give data=protein_structures\n")


def test_contacts_train_beyond_the_training_chains_is_one_line(tmp_path: Path, run) -> None:
    ckpt, _ = run
    code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", "contacts_train=10")
    assert code == 2 and err.endswith("error: contacts_train=10: the data's train split holds 4 chain(s) this model "
                                      "reads; give contacts_train <= 4\n")
    for key, value, expected in (("contacts_train", 0, "expected an integer >= 1 (training chains the contact "
                                  "regression is fitted on)"),
                                 ("contacts_eval", -1, "expected an integer >= 1 (test chains the contacts are "
                                  "scored on)"),
                                 ("contacts_C", 0, "expected a number > 0")):
        code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", f"{key}={value}")
        assert code == 2 and err == f"error: {key}={value}: {expected}\n"


def test_contacts_with_a_source_but_no_data_or_with_a_probe_is_one_line(tmp_path: Path, run) -> None:
    code, _, err = contacts(tmp_path, "pretrained=pkg:antiberty")
    assert code == 2 and err == ("error: contacts=true with pretrained='pkg:antiberty' needs chains of known "
                                 "structure: data=protein_structures\n")
    code, _, err = contacts(tmp_path, f"ckpt_path={run[0]}", "probe=knn")
    assert code == 2 and err == "error: contacts=true and probe=knn: one measurement at a time; leave one out\n"


def test_training_chains_without_contacts_or_an_empty_test_split_are_one_line(tmp_path: Path, run) -> None:
    ckpt, cfgs = run
    code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", "contacts_train=4", f"hydra.searchpath=[file://{cfgs}]",
                            "data=fake_structures", "data.length=5")
    assert code == 2 and err.endswith("error: contacts: the 4 training chain(s) hold 0 contacts among 0 residue pairs "
                                      "at least 6 apart; the regression needs contacts and non-contacts\n")
    code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", "contacts_train=4", f"hydra.searchpath=[file://{cfgs}]",
                            "data=fake_structures", "data.test=0")
    assert code == 2 and err.endswith("error: contacts=true: the data's test split holds no chain this model reads; "
                                      "nothing to evaluate\n")


def test_odd_long_and_few_chains_run_with_notes(tmp_path: Path, run) -> None:
    ckpt, cfgs = run
    code, out, err = contacts(tmp_path, f"ckpt_path={ckpt}", "contacts_train=3", f"hydra.searchpath=[file://{cfgs}]",
                              "data=fake_structures", "+data.long_chain=100", "+data.odd_chain=true")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: 1 train chain(s) skipped: letters the esm alphabet lacks (first: odd0: 'J' at residue 1 of "
        f"{notes[0].split(' of ', 1)[1].split(' is ')[0]} is not a residue letter of the esm alphabet: expected one "
        "of LAGVSERTIDPKQNFYMHWCXBUZO)",
        "note: 1 test chain(s) longer than the model's 62 residues (max_len=64 tokens) cropped to their first 62 "
        "residues (first: long0)",
        "note: contacts_eval=500: the test split holds 4 chain(s); all of them used",
        # a random model's maps hold no fold: at Rao et al.'s C = 0.15 the L1 fit keeps no weight
        "note: the regression kept no feature (contacts_C=0.15): this model's maps told contacts from non-contacts "
        "no better than the L1 penalty costs, so its scores are one constant, ranked row by row (an untrained "
        "model's are)",
    ]
    metrics = json.loads(next(tmp_path.glob("eval*/metrics.json")).read_text())
    assert metrics["contacts/train_chains"] == 3 and metrics["contacts/eval_chains"] == 4


def test_save_attention_or_average_last_with_contacts_is_refused_not_dropped(tmp_path: Path, run) -> None:
    ckpt, _ = run
    for key in ("save_attention", "average_last"):
        code, _, err = contacts(tmp_path, f"ckpt_path={ckpt}", f"{key}=2")
        assert code == 2 and err == (f"error: {key}=2 is not read with contacts=true; leave one of the two out "
                                     f"(`python evaluate.py ckpt_path=<run> {key}=2` runs a run's own test "
                                     "step)\n"), err
    out = tmp_path / "probe"
    code, _, err = command("evaluate.py", f"ckpt_path={ckpt}", "probe=knn", "save_attention=2", f"hydra.run.dir={out}")
    assert code == 2 and err == ("error: save_attention=2 is not read with probe=knn; leave one of the two out "
                                 "(`python evaluate.py ckpt_path=<run> save_attention=2` runs a run's own test step)\n")
