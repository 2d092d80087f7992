"""The training build with `pretrained` (utils/build.py), in process and without training: an image source
goes through utils/pretrained.py and keeps the data module's own state, a Marian source through the same
path with its tokenizer (every converter returns a Converted)."""

from __future__ import annotations

from pathlib import Path

import torch
from test_pretrained_vit import reference

from helpers.marian_tiny import make_tiny_marian
from helpers.pretrained import image_folder
from utils.build import build_datamodule, build_module, setup_runtime


def test_an_image_source_builds_a_vit_with_its_weights_and_no_tokenizer(compose_train, tmp_path: Path) -> None:
    ref = reference("cls", tmp_path / "src")
    folder = image_folder(tmp_path / "data", classes=5, per_class=2)  # the source's 5 classes: the head is kept
    cfg = compose_train("model=vit", "data=image_folder", f"data.root={folder}", f"pretrained={tmp_path / 'src'}",
                        "data.image_size=32", "model.net.drop_path=0.05")
    setup_runtime(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    assert getattr(dm, "tokenizer", None) is None  # not the translator's branch
    assert cfg.model.net.drop_path == 0.05  # the run's regularisation over the source's
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(module.net.eval()(x), ref.eval()(x), atol=1e-4, rtol=0)


def test_a_marian_source_builds_the_translator_with_its_tokenizer(compose_train, tmp_path: Path) -> None:
    folder = make_tiny_marian(tmp_path / "marian")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"Good morning ({i}).\tGuten Morgen ({i}).\n" for i in range(40)))
    cfg = compose_train("model=translator", "data=tsv", f"data.path={pairs}", f"pretrained={folder}",
                        f"paths.data_dir={tmp_path / 'ds'}")
    setup_runtime(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    # Converted like every family: checkpoints carry the architecture and preprocess, so they need no source
    assert cfg.pretrained == str(folder) and cfg.preprocess.modality == "text"
    assert cfg.model.length_norm == "hf"  # the source's decoding rules (generation_config.json)
    assert dm.tokenizer.to_str().startswith('{"marian"')
    assert module.net.final_logits_bias is not None  # the source's weights, not a fresh init
