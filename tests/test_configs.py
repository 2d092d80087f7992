"""Every config composes and instantiates; model=... pulls its own default data; typos fail."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers.config import DATASETS, MODEL_FOR_DATA, MODELS, ROOT, compose_config
from utils.build import build_datamodule, build_module, recipe_lines

SMALL_DATA = {"translator": ["data.num_pairs=1000", "data.bpe_vocab_size=200"]}  # a tokenizer in seconds


@pytest.mark.parametrize("model", MODELS)
def test_each_model_composes_with_its_default_data(model: str, tmp_path) -> None:
    if model == "whisper":  # no training from scratch: the source brings the network and the tokenizer
        pytest.skip("model=whisper needs pretrained=<source> and data.root: built in tests/test_whisper_finetune.py")
    cfg = compose_config("train", [f"model={model}", *SMALL_DATA.get(model, [])], tmp_path)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    if "num_classes" in cfg.model:
        assert cfg.model.num_classes == dm.num_classes
    elif hasattr(dm, "alphabet"):  # a protein model reads the residues of the data's alphabet
        assert module.net.alphabet == dm.alphabet
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
        pytest.skip("finetune_* need pretrained=<source>: built in tests/test_pretrained_*.py")
    if cfg.data.get("vocab_size", 0) is None:  # normally read from the trained tokenizer
        cfg.data.vocab_size = 100
    assert build_module(cfg) is not None


def test_an_experiment_sets_top_level_keys_and_the_command_line_wins(tmp_path) -> None:
    """`_self_` first in train.yaml: an experiment's seed or optimized_metric is not overwritten."""
    extra = tmp_path / "extra"
    (extra / "experiment").mkdir(parents=True)
    (extra / "experiment" / "seeded.yaml").write_text(
        "# @package _global_\nseed: 7\noptimized_metric: val/loss\n")
    search = f"hydra.searchpath=[file://{extra}]"
    cfg = compose_config("train", ["experiment=seeded", search], tmp_path)
    assert (cfg.seed, cfg.optimized_metric) == (7, "val/loss")
    assert compose_config("train", ["experiment=seeded", search, "seed=3"], tmp_path).seed == 3
    assert compose_config("train", [], tmp_path).seed == 42


def test_model_recipe_sets_epochs_and_the_command_line_wins(tmp_path) -> None:
    assert compose_config("train", ["model=translator"], tmp_path).trainer.max_epochs == 6  # recipe/translator.yaml
    assert compose_config("train", ["model=translator", "trainer.max_epochs=2"], tmp_path).trainer.max_epochs == 2
    assert compose_config("train", ["model=vit"], tmp_path).trainer.max_epochs == 35  # no recipe: trainer default


def test_fashion_mnist_pulls_the_vit_fashion_experiment_and_the_run_log_says_so(tmp_path) -> None:
    recipe = OmegaConf.load(ROOT / "configs" / "experiment" / "vit_fashion.yaml")
    cfg = compose_config("train", ["data=fashion_mnist"], tmp_path)
    assert cfg.trainer.max_epochs == recipe.trainer.max_epochs  # not the trainer default's 35
    assert cfg.model.net.dim == recipe.model.net.dim and cfg.model.tta_flip is True
    experiment = compose_config("train", ["experiment=vit_fashion"], tmp_path)
    assert (experiment.model, experiment.data) == (cfg.model, cfg.data)
    assert experiment.trainer == cfg.trainer
    [line] = recipe_lines(cfg, cfg.hydra.runtime.choices)
    assert line.startswith("experiment/vit_fashion.yaml set model.tta_flip=True, model.net.")
    overrides = ["data=fashion_mnist", "trainer.max_epochs=3", "model.net.dim=32"]
    cfg = compose_config("train", overrides, tmp_path)
    assert (cfg.trainer.max_epochs, cfg.model.net.dim) == (3, 32)
    assert "model.net.dim=64 (overridden: 32)" in recipe_lines(cfg, cfg.hydra.runtime.choices)[0]
    mnist = compose_config("train", ["model=vit"], tmp_path)  # the embedded digits keep their settings
    assert (mnist.trainer.max_epochs, mnist.model.net.dim, mnist.model.tta_flip) == (35, 96, False)
    assert recipe_lines(mnist, mnist.hydra.runtime.choices) == []


def test_a_data_config_pulls_settings_of_other_groups_only_from_an_experiment() -> None:
    """Cross-group settings live in experiment/ (lightning-hydra-template); the log names them."""
    for path in (ROOT / "configs" / "data").glob("*.yaml"):
        for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
            key = next(iter(entry)) if isinstance(entry, dict) else entry
            assert key.startswith(("/experiment@", "/data/", "_self_")), f"{path.name}: {entry}"
