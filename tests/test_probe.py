"""`evaluate.py probe=knn | linear` (inference/probe.py): frozen pooled features of a pretrained source or a
run, a scikit-learn probe fitted on the train split and scored on the test split, test/<name>_acc in
metrics.json; its accuracy is the one scikit-learn gives on the same features computed independently."""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from timm.models._hub import save_for_hf

from helpers.cli import command
from helpers.pretrained import image_folder, randomize
from helpers.runs import train_in_process
from inference.probe import pooled_features, source_with_data
from utils.restore import restore


def tiny_timm(folder: Path) -> torch.nn.Module:
    model = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                        embed_dim=32, depth=2, num_heads=2, num_classes=3), 0)
    save_for_hf(model, str(folder), safe_serialization=True)
    return model


def data_cfg(root: Path) -> dict:
    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "data" / "image_folder.yaml")
    cfg.root = str(root)
    return OmegaConf.to_container(cfg)


def timm_features(model: torch.nn.Module, loader) -> tuple:
    """timm's own pooled features (forward_head(pre_logits=True)) of every example, in loader order."""
    xs, ys = [], []
    with torch.no_grad():
        for x, y in loader:
            xs.append(model.forward_head(model.forward_features(x), pre_logits=True))
            ys.append(y)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def test_knn_and_linear_probes_equal_sklearn_on_independently_computed_features(tmp_path: Path) -> None:
    model = tiny_timm(tmp_path / "vit")
    root = image_folder(tmp_path / "images", classes=3, per_class=10)
    # the split the command reads, and timm's features of it (the zoo's converted ViT is not involved)
    net, dm = source_with_data(str(tmp_path / "vit"), OmegaConf.create(data_cfg(root)), None)
    dm.setup("fit")
    train, test = timm_features(model, dm.split_dataloader("train")), timm_features(model, dm.split_dataloader("test"))
    ours = pooled_features(net, dm.split_dataloader("train"))
    assert abs(ours[0] - train[0]).max() < 1e-4 and (ours[1] == train[1]).all()  # the zoo's ViT reads the same
    knn = KNeighborsClassifier(n_neighbors=min(5, len(train[1])), metric="cosine").fit(*train)
    expected_knn = float((knn.predict(test[0]) == test[1]).mean())
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(*train)
    expected_linear = float((linear.predict(test[0]) == test[1]).mean())
    for probe, extra, key, expected in (("knn", ["probe.k=5"], "test/knn_acc", expected_knn),
                                        ("linear", [], "test/linear_acc", expected_linear)):
        out = tmp_path / f"eval_{probe}"
        proc = command("evaluate.py", f"pretrained={tmp_path / 'vit'}", f"probe={probe}", *extra,
                       "data=image_folder", f"data.root={root}", f"hydra.run.dir={out}", check=True)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics == {key: expected}, proc.stdout
        assert f"{probe} probe on 32 frozen features, {len(train[1])} train / {len(test[1])} test" in proc.stdout


def test_a_probe_without_data_or_with_a_bad_k_is_one_line(tmp_path: Path) -> None:
    tiny_timm(tmp_path / "vit")
    proc = command("evaluate.py", f"pretrained={tmp_path / 'vit'}", "probe=knn", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: probe with pretrained='{tmp_path / 'vit'}' "
                                                          "needs data to probe on")
    root = image_folder(tmp_path / "images", classes=2, per_class=5)
    proc = command("evaluate.py", f"pretrained={tmp_path / 'vit'}", "probe=knn", "probe.k=0", "data=image_folder",
                   f"data.root={root}", f"hydra.run.dir={tmp_path / 'b'}")
    assert proc.returncode == 2 and proc.stderr == "error: probe.k=0: expected an integer >= 1 (neighbours that vote)\n"
    proc = command("evaluate.py", f"pretrained={tmp_path / 'vit'}", f"hydra.run.dir={tmp_path / 'c'}")
    assert proc.returncode == 2 and proc.stderr == (
        "error: pretrained= is read by probes only (probe=knn | linear); a run is evaluated on its own data: "
        "evaluate.py ckpt_path=<run>\n")


def test_knn_probe_of_a_trained_run_on_its_own_data(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "images", classes=2, per_class=10)
    run = tmp_path / "run"
    train_in_process("vit", run, "data=image_folder", f"data.root={root}", "data.image_size=16",
                     "model.net.patch_size=4", "trainer.max_epochs=1")
    restored = restore(run, data=True)
    net, dm = restored.module.net.eval(), restored.datamodule
    dm.setup("fit")

    def cls_rows(split: str) -> tuple:  # the class token after the final norm: what the head reads
        xs, ys = zip(*[(net.forward_features(x)[:, 0], y) for x, y in dm.split_dataloader(split)])
        return torch.cat(xs).detach().numpy(), torch.cat(ys).numpy()

    with torch.no_grad():
        train, test = cls_rows("train"), cls_rows("test")
    knn = KNeighborsClassifier(n_neighbors=min(20, len(train[1])), metric="cosine").fit(*train)
    out = tmp_path / "eval"
    command("evaluate.py", f"ckpt_path={run}", "probe=knn", f"hydra.run.dir={out}", check=True)
    assert json.loads((out / "metrics.json").read_text()) == {"test/knn_acc": float((knn.predict(test[0]) ==
                                                                                       test[1]).mean())}


def test_linear_probe_of_whisper_on_fsdd_equals_sklearn_on_transformers_encoder_features(tmp_path: Path) -> None:
    """A speech source's probe: the mean of Whisper's encoder output over the clip's own frames (not padded to
    30 s), here computed by transformers (WhisperFeatureExtractor, WhisperForConditionalGeneration's encoder)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from helpers.fsdd_tiny import write_tiny_fsdd
    from helpers.whisper_tiny import make_tiny_whisper

    folder = make_tiny_whisper(tmp_path / "whisper")
    root = write_tiny_fsdd(tmp_path / "recordings")
    # 0.32 s = 32 frames: the tiny model's 16 encoder positions, the only input length transformers' encoder takes
    data = OmegaConf.load(Path(__file__).parents[1] / "configs" / "data" / "fsdd.yaml")
    data.pop("defaults")
    data.merge_with({"root": str(root), "clip_seconds": 0.32, "synthetic_root": None, "sample_rate": 8000})
    notes: list[str] = []
    net, dm = source_with_data(str(folder), data, None, notes)
    assert notes == [f"data.sample_rate=8000 -> 16000: the clips are resampled to what pretrained={folder} hears"]
    dm.setup("fit")
    ref = WhisperForConditionalGeneration.from_pretrained(str(folder), attn_implementation="eager").eval()
    extractor = WhisperFeatureExtractor(feature_size=80)

    def reference(split: str) -> tuple:
        xs, ys = [], []
        with torch.no_grad():
            for wave, y in dm.split_dataloader(split):
                mel = extractor(list(wave.numpy()), sampling_rate=16000, return_tensors="pt").input_features
                xs.append(ref.model.encoder(mel[..., :32]).last_hidden_state.mean(1))
                ys.append(y)
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()

    train, test = reference("train"), reference("test")
    ours = pooled_features(net, dm.split_dataloader("train"))
    assert ours[0].shape == (20, 48) and abs(ours[0] - train[0]).max() < 1e-4 and (ours[1] == train[1]).all()
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(*train)
    expected = float((linear.predict(test[0]) == test[1]).mean())
    out = tmp_path / "eval"
    proc = command("evaluate.py", f"pretrained={folder}", "probe=linear", "data=fsdd", f"data.root={root}",
                   "data.clip_seconds=0.32", f"hydra.run.dir={out}", check=True)
    assert json.loads((out / "metrics.json").read_text()) == {"test/linear_acc": expected}, proc.stdout
    assert "linear probe on 48 frozen features, 20 train / 20 test examples" in proc.stdout


def test_a_source_probed_on_the_other_modality_is_one_line(tmp_path: Path) -> None:
    from helpers.fsdd_tiny import write_tiny_fsdd
    from helpers.whisper_tiny import make_tiny_whisper

    tiny_timm(tmp_path / "vit")
    speech = make_tiny_whisper(tmp_path / "whisper")
    images = image_folder(tmp_path / "images", classes=2, per_class=5)
    recordings = write_tiny_fsdd(tmp_path / "recordings")
    proc = command("evaluate.py", f"pretrained={tmp_path / 'vit'}", "probe=linear", "data=fsdd",
                   f"data.root={recordings}", f"hydra.run.dir={tmp_path / 'a'}")
    assert proc.returncode == 2 and proc.stderr == (
        f"error: probe: pretrained='{tmp_path / 'vit'}' reads images; data='fsdd' is audio (data=image_folder, "
        "fashion_mnist, mnist, cifar10)\n")
    proc = command("evaluate.py", f"pretrained={speech}", "probe=linear", "data=image_folder", f"data.root={images}",
                   f"hydra.run.dir={tmp_path / 'b'}")
    assert proc.returncode == 2 and proc.stderr == (
        f"error: probe: pretrained='{speech}' reads audio; data='image_folder' is not audio (data=fsdd, keywords, "
        "speech_commands, audio_folder)\n")
