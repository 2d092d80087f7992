"""inference/: the model runs once per input for the printed prediction, the PNG pictures and the
HTML page (predict.py, app.py), and the notebook explorer shows that page inline."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
import torch
from helpers.config import ROOT, compose_config
from omegaconf import OmegaConf, open_dict

import predict
from inference.load import load
from utils.build import build_datamodule, build_module
from utils.checkpoint import CONFIG_KEY
from viz.samples import write_png

SIZES = {
    "vit": ["model.net.depth=1"],
    "translator": [
        "data.num_pairs=1000",
        "data.bpe_vocab_size=200",
        "model.net.encoder_depth=1",
        "model.net.decoder_depth=1",
        "model.beam_size=1",
        "model.max_new_tokens=6",
    ],
}


def make_run(model: str, run: Path) -> Path:
    """A run directory with an untrained checkpoint carrying its config, as train.py leaves it."""
    cfg = compose_config("train", [f"model={model}", "model.net.dim=32", *SIZES[model]], run)
    with open_dict(cfg):
        cfg.paths.data_dir = str(ROOT / "datasets")  # the generated datasets cached there
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    ckpt = {
        "state_dict": module.state_dict(),
        CONFIG_KEY: OmegaConf.to_container(cfg, resolve=False),
    }
    if dm.state_dict():  # the translator's tokenizer
        ckpt[type(dm).__name__] = dm.state_dict()
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    return run


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    return {model: load(make_run(model, tmp_path_factory.mktemp(model))) for model in SIZES}


def counted(predictor) -> dict[str, int]:
    """Count the network's forward passes and the module's decodings from now on."""
    calls = {"forward": 0, "decode": 0}
    predictor.net.register_forward_pre_hook(
        lambda *_: calls.__setitem__("forward", calls["forward"] + 1)
    )
    if predictor.task == "generate":
        decode = predictor.module.decode_ids

        def counting(*args, **kwargs):
            calls["decode"] += 1
            return decode(*args, **kwargs)

        predictor.module.decode_ids = counting
    return calls


def images(folder: Path, n: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [
        str(
            write_png(
                torch.randint(0, 256, (1, 28, 28), generator=g, dtype=torch.uint8),
                folder / f"{i}.png",
            )
        )
        for i in range(n)
    ]


def test_predict_runs_a_classifier_once_per_input_for_pictures_and_page(
    predictors, tmp_path, monkeypatch, capsys
) -> None:
    predictor = predictors["vit"]
    calls = counted(predictor)
    monkeypatch.setattr(predict, "load", lambda spec, **_: predictor)
    files = images(tmp_path, 2)
    out = tmp_path / "out"
    assert (
        predict.main(
            [
                str(predictor.source),
                *files,
                "--attention-dir",
                str(out),
                "--html",
                str(out / "page.html"),
            ]
        )
        == 0
    )
    assert calls["forward"] == 2, (
        calls
    )  # one per input: prediction, PNG and page from the same pass
    assert len(list(out.glob("*.png"))) == 2 and len(list(out.glob("page_*.html"))) == 2
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")


def test_predict_decodes_a_sentence_once_and_teacher_forces_once(
    predictors, tmp_path, monkeypatch
) -> None:
    predictor = predictors["translator"]
    calls = counted(predictor)
    monkeypatch.setattr(predict, "load", lambda spec, **_: predictor)
    out = tmp_path / "out"
    assert (
        predict.main(
            [
                str(predictor.source),
                "Monday, March 3, 2025",
                "Thank you.",
                "--attention-dir",
                str(out),
                "--html",
                str(out / "page.html"),
            ]
        )
        == 0
    )
    assert calls["decode"] == 2 and calls["forward"] <= 2, (
        calls
    )  # per sentence: 1 decode + 1 teacher-forced pass
    assert len(list(out.glob("*.png"))) == 4 and len(list(out.glob("page_*.html"))) == 2


def test_an_app_request_runs_the_model_once(predictors, tmp_path) -> None:
    from app import Demo

    calls = counted(predictors["vit"])
    message, top, frame, pictures = Demo(predictors["vit"], tmp_path, 1.0).answer(
        images(tmp_path, 1)[0]
    )
    assert message == "" and top and frame.startswith("<iframe") and len(pictures) == 1
    assert calls["forward"] == 1, calls
    calls = counted(predictors["translator"])
    message, text, frame, pictures = Demo(predictors["translator"], tmp_path, 1.0).answer(
        "Thank you."
    )
    assert (
        message == "" and len(pictures) == 2 and calls["decode"] == 1 and calls["forward"] <= 1
    ), calls


def test_notebook_explorer_is_the_page_in_an_iframe(predictors, tmp_path) -> None:
    from viz.explorer import page
    from viz.notebook import explore

    shown = explore(predictors["vit"], images(tmp_path, 1)[0])
    frame = shown._repr_html_()
    assert frame.startswith("<iframe") and frame.endswith("</iframe>")
    srcdoc = frame.split('srcdoc="', 1)[1].rsplit('"></iframe>', 1)[0]
    assert html.unescape(srcdoc) == shown.html == page(shown.prediction, "0.png")
    assert '"kind":"image"' in shown.html and 'src="http' not in shown.html
