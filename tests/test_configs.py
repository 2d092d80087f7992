"""Every config composes and instantiates; model=... pulls its own default data; typos fail."""

from __future__ import annotations

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers.config import DATASETS, MODEL_FOR_DATA, MODELS, ROOT, compose_config
from utils.build import build_datamodule, build_module

SMALL_DATA = {"translator": ["data.num_pairs=1000", "data.bpe_vocab_size=200"]}  # a tokenizer in seconds


@pytest.mark.parametrize("model", MODELS)
def test_each_model_composes_with_its_default_data(model: str, tmp_path) -> None:
    cfg = compose_config("train", [f"model={model}", *SMALL_DATA.get(model, [])], tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    if "num_classes" in cfg.model:
        assert cfg.model.num_classes == dm.num_classes
    else:  # the translator is sized by its trained tokenizer
        assert module.net.vocab_size == dm.vocab_size == dm.tokenizer.get_vocab_size()
    assert sum(p.numel() for p in module.parameters()) > 0


def test_vit_defaults_to_embedded_mnist(tmp_path) -> None:
    cfg = compose_config("train", [], tmp_path)
    assert cfg.data.dataset == "mnist" and cfg.model.net._target_ == "models.vit.VisionTransformer"


@pytest.mark.parametrize("data", DATASETS)
def test_each_dataset_config_composes_with_its_model(data: str, tmp_path) -> None:
    model = MODEL_FOR_DATA[data]
    cfg = compose_config("train", [f"model={model}", f"data={data}"], tmp_path)
    assert cfg.data.dataset == data
    if model == "vit":  # model dimensions follow the data (channels, resolution), by interpolation
        assert cfg.model.net.in_chans == cfg.data.in_chans and cfg.model.net.img_size == cfg.data.image_size


def test_any_key_can_be_overridden(tmp_path) -> None:
    cfg = compose_config("train", ["model.net.depth=2", "model.optimizer.lr=0.01", "trainer.max_epochs=3"], tmp_path)
    module = build_module(cfg)
    assert len(module.net.encoder.blocks) == 2 and cfg.trainer.max_epochs == 3
    assert module.optimizer_factory.keywords["lr"] == 0.01


def test_evaluate_config_composes(tmp_path) -> None:
    cfg = compose_config("evaluate", ["ckpt_path=x.ckpt"], tmp_path)
    assert cfg.ckpt_path == "x.ckpt" and cfg.trainer._target_ == "lightning.Trainer"


def test_config_key_typo_is_rejected(tmp_path) -> None:
    with pytest.raises(ConfigCompositionException, match="depht"):
        compose_config("train", ["model.net.depht=2"], tmp_path)
    with pytest.raises(ConfigCompositionException, match="vitt"):
        compose_config("train", ["model=vitt"], tmp_path)


EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_composes(experiment: str, tmp_path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    if experiment.startswith("finetune_"):
        pytest.skip("finetune_* need model.pretrained=<source>: built in tests/test_pretrained_*.py")
    if cfg.data.get("vocab_size", 0) is None:  # normally read from the trained tokenizer
        cfg.data.vocab_size = 100
    assert build_module(cfg) is not None


def test_model_recipe_sets_epochs_and_the_command_line_wins(tmp_path) -> None:
    assert compose_config("train", ["model=translator"], tmp_path).trainer.max_epochs == 6  # recipe/translator.yaml
    assert compose_config("train", ["model=translator", "trainer.max_epochs=2"], tmp_path).trainer.max_epochs == 2
    assert compose_config("train", ["model=vit"], tmp_path).trainer.max_epochs == 35  # no recipe: trainer default


def test_dataset_recipe_applies_after_the_model_recipe_and_the_command_line_wins(tmp_path) -> None:
    recipe = OmegaConf.load(ROOT / "configs" / "recipe" / "data" / "vit_fashion_mnist.yaml")
    cfg = compose_config("train", ["data=fashion_mnist"], tmp_path)
    assert cfg.trainer.max_epochs == recipe.trainer.max_epochs  # not the trainer default's 35
    assert cfg.model.net.dim == recipe.model.net.dim and cfg.model.tta_flip is True
    older = compose_config("train", ["experiment=vit_fashion"], tmp_path)  # the older name, the same run
    assert (older.model, older.data, older.trainer) == (cfg.model, cfg.data, cfg.trainer)
    cfg = compose_config("train", ["data=fashion_mnist", "trainer.max_epochs=3", "model.net.dim=32"], tmp_path)
    assert (cfg.trainer.max_epochs, cfg.model.net.dim) == (3, 32)
    mnist = compose_config("train", ["model=vit"], tmp_path)  # the embedded digits keep their settings
    assert (mnist.trainer.max_epochs, mnist.model.net.dim, mnist.model.tta_flip) == (35, 96, False)
