"""Protein converters given what they refuse or adapt (docs/errors.md, "Protein converters"): a fair-esm pickle
without the trust flag, ESM-1b / ESMFold / another alphabet, an EsmModel without LM head, a fair-esm file without
its contact regression, an AntiBERTy folder whose vocab is in another order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import EsmConfig, EsmModel

from helpers.cli import command
from models.pretrained import convert
from models.protein_alphabet import Alphabet
from test_protein_model import (ANTIBERTY, ESM2_TINY, MASKED, SEQS, batch, fair_esm_files, needs_antiberty,
                                randomize)
from utils.errors import FileFormatError, UserError
from utils.pretrained import apply_pretrained

ESM = Alphabet.named("esm")


def test_a_fair_esm_pickle_without_the_trust_flag_is_refused(tmp_path: Path) -> None:
    _, path = fair_esm_files(tmp_path)
    with pytest.raises(UserError) as err:
        convert(str(path))
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "pickle that can run code" in message
    assert "trust_pickle=true" in message and "--trust-pickle" in message
    # predict.py: one line, exit 2; with --trust-pickle the file is read (the conversion itself is tested in
    # tests/test_protein_model.py)
    code, _, stderr = command("predict.py", str(path), "MKTAYIAKQR")
    assert (code, stderr.strip().splitlines()) == (2, [f"error: {message}"])
    # train.py / evaluate.py: the Hydra key trust_pickle reaches the converter
    cfg = OmegaConf.create({"pretrained": str(path), "preprocess": None, "trust_pickle": False,
                            "model": {"net": {"_target_": "models.protein.ProteinLM"}}})
    with pytest.raises(UserError, match="trust_pickle=true"):
        apply_pretrained(cfg)
    cfg.trust_pickle = True
    apply_pretrained(cfg)
    assert cfg.model.net.depth == 2 and cfg.preprocess.modality == "protein"


def test_esm1b_esmfold_and_other_alphabets_are_refused(tmp_path: Path) -> None:
    for i, (change, expected) in enumerate([
        ({"position_embedding_type": "absolute"}, "position_embedding_type='absolute' (ESM-1b / ESM-1v); "
                                                  "the zoo converts ESM-2 only, which has 'rotary'"),
        ({"emb_layer_norm_before": True}, "emb_layer_norm_before=true"),
        ({"is_folding_model": True}, "an ESMFold model"),
        ({"vocab_size": 40}, "vocab_size=40 is not ESM's 33-token alphabet"),
    ]):
        folder = tmp_path / f"esm{i}"
        EsmModel(EsmConfig(**ESM2_TINY), add_pooling_layer=False).save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(FileFormatError) as err:
            convert(str(folder))
        assert expected in str(err.value) and "\n" not in str(err.value), change
    # fair-esm's ESM-1b layout (a learned position table) in a trusted .pt file
    _, path = fair_esm_files(tmp_path)
    data = torch.load(path, weights_only=False)
    data["model"]["encoder.sentence_encoder.embed_positions.weight"] = torch.zeros(1026, 40)
    torch.save(data, path)
    with pytest.raises(FileFormatError, match=r"learned positions \(ESM-1 / ESM-1b / ESM-1v\)"):
        convert(str(path), trust_pickle=True)


def test_an_esm_model_without_lm_head_converts_with_a_fresh_head_and_a_note(tmp_path: Path, capsys) -> None:
    torch.manual_seed(2)
    ref = randomize(EsmModel(EsmConfig(**ESM2_TINY, attn_implementation="eager"), add_pooling_layer=False))
    ref.save_pretrained(tmp_path)
    capsys.readouterr()  # transformers' progress bar
    conv = convert(str(tmp_path))
    err = capsys.readouterr().err
    assert err.startswith("note: ") and "has no masked-LM head; the head is freshly initialised" in err
    assert conv.preprocess["untrained"] == ["lm_head"]
    net = conv.build()  # the encoder and contact head are the checkpoint's
    ids = batch(ESM, SEQS, MASKED)
    real = ids.ne(ESM.pad)
    with torch.no_grad():
        assert (net.hidden(ids) - ref(ids, attention_mask=real.long()).last_hidden_state)[real].abs().max() <= 1e-4
        assert (net.contacts(ids) - ref.predict_contacts(ids, real.long())).abs().max() <= 1e-5


def test_a_fair_esm_file_without_its_regression_gets_a_zero_contact_head_and_a_note(tmp_path: Path, capsys
                                                                                       ) -> None:
    _, path = fair_esm_files(tmp_path, regression=False)
    conv = convert(str(path), trust_pickle=True)
    err = capsys.readouterr().err
    assert "no esm2_t2_tiny-contact-regression.pt beside esm2_t2_tiny.pt: the contact head is zero" in err
    assert conv.preprocess["untrained"] == ["contact_head"]
    assert (conv.build().contacts(batch(ESM, SEQS[:1])) == 0.5).all()


@needs_antiberty
def test_an_antiberty_folder_with_another_vocab_order_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trained_models" / "AntiBERTy_md_smooth"
    folder.mkdir(parents=True)
    shutil.copy(ANTIBERTY / "AntiBERTy_md_smooth" / "config.json", folder)  # the weights are never reached
    tokens = (ANTIBERTY / "vocab.txt").read_text().split()
    (tmp_path / "trained_models" / "vocab.txt").write_text("\n".join(tokens[:5] + sorted(tokens[5:], reverse=True)))
    with pytest.raises(FileFormatError, match="vocab.txt lists .*; expected AntiBERTy's"):
        convert(str(folder))
