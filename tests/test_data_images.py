"""Tests for data/images.py: embedded MNIST split, batches, augmentation, image folders, error messages."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data import images as di
from data.images import ImageDataModule

REPO = Path(__file__).resolve().parents[1]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@pytest.fixture(scope="module")
def csv_rows() -> np.ndarray:
    """Independent reference: the raw CSV read with plain gzip + numpy, not through the module."""
    with gzip.open(di.mnist_5k_path(), "rt") as f:
        return np.array([[int(v) for v in line.split(",")] for line in f], dtype=np.int64)


@pytest.fixture(scope="module")
def mnist() -> ImageDataModule:
    dm = ImageDataModule(dataset="mnist", batch_size=64)
    dm.setup()
    return dm


def test_mnist_split_sizes_balance_and_disjoint(mnist: ImageDataModule, csv_rows: np.ndarray) -> None:
    assert csv_rows.shape == (5000, 785)
    sets = [set(d.indices) for d in (mnist.train_dataset, mnist.val_dataset, mnist.test_dataset)]
    assert [len(s) for s in sets] == [4000, 500, 500]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(range(5000))
    for s, per_class in zip(sets, (400, 50, 50)):
        assert np.bincount(csv_rows[sorted(s), -1], minlength=10).tolist() == [per_class] * 10
    assert mnist.num_classes == 10 and mnist.class_names == [str(i) for i in range(10)]


def test_mnist_split_is_deterministic_and_seeded(mnist: ImageDataModule) -> None:
    again = ImageDataModule(dataset="mnist")
    again.setup()
    for a, b in ((mnist.train_dataset, again.train_dataset), (mnist.test_dataset, again.test_dataset)):
        assert a.indices == b.indices
        assert torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    other = ImageDataModule(dataset="mnist", seed=1)
    other.setup()
    assert other.test_dataset.indices != mnist.test_dataset.indices


def test_mnist_pixels_and_labels_match_csv(mnist: ImageDataModule, csv_rows: np.ndarray) -> None:
    for split in (mnist.train_dataset, mnist.val_dataset, mnist.test_dataset):
        for pos in (0, 7, len(split) - 1):
            image, label = split[pos]
            row = csv_rows[split.indices[pos]]
            assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
            assert image.flatten().tolist() == row[:-1].tolist()
            assert int(label) == row[-1]


def test_val_batch_is_normalised_csv_data(mnist: ImageDataModule, csv_rows: np.ndarray) -> None:
    x, y = next(iter(mnist.val_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    rows = csv_rows[mnist.val_dataset.indices[:64]]
    expected = (torch.tensor(rows[:, :-1], dtype=torch.float32).view(-1, 1, 28, 28) / 255 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == rows[:, -1].tolist()
    assert mnist.mean == (MNIST_MEAN,) and mnist.std == (MNIST_STD,)
    assert torch.allclose(mnist.denormalize(x), expected * MNIST_STD + MNIST_MEAN, atol=1e-5)
    assert torch.allclose(mnist.normalize(torch.tensor(rows[:, :-1], dtype=torch.uint8).view(-1, 1, 28, 28)), x)


def test_augmentation_only_in_training(mnist: ImageDataModule) -> None:
    val = [torch.cat([x for x, _ in mnist.val_dataloader()]) for _ in range(2)]
    assert torch.equal(val[0], val[1])
    # same samples through the train collate twice: augmentation makes them differ, labels stay
    samples = [mnist.train_dataset[i] for i in range(32)]
    train_collate = mnist.train_dataloader().collate_fn
    (a, ya), (b, yb) = train_collate(samples), train_collate(samples)
    assert a.shape == (32, 1, 28, 28) and not torch.equal(a, b) and torch.equal(ya, yb)
    plain = mnist.val_dataloader().collate_fn(samples)[0]
    assert not torch.equal(a, plain)
    # mild: mostly the same digit (correlation with the clean image stays high)
    corr = torch.corrcoef(torch.stack([a.flatten(), plain.flatten()]))[0, 1]
    assert corr > 0.4
    no_aug = ImageDataModule(dataset="mnist", augment=False)
    no_aug.setup()
    collate = no_aug.train_dataloader().collate_fn
    assert torch.equal(collate(samples)[0], collate(samples)[0])


def test_whole_pixel_augment_is_crop_and_flip() -> None:
    """cifar10-style augmentation only moves/mirrors pixels: every output row is a shifted input row."""
    x = torch.rand(16, 3, 32, 32)
    spec = di.AugmentSpec(translate=4 / 32, hflip=True, whole_pixels=True)
    out = di.random_affine(x, spec)
    for img, src in zip(out, x):
        found = False
        for flipped in (src, src.flip(-1)):
            padded = torch.nn.functional.pad(flipped, (4, 4, 4, 4))
            for dy in range(9):
                for dx in range(9):
                    if torch.allclose(padded[:, dy : dy + 32, dx : dx + 32], img, atol=1e-5):
                        found = True
        assert found


def test_train_loader_covers_train_split_once(mnist: ImageDataModule, csv_rows: np.ndarray) -> None:
    labels = torch.cat([y for _, y in mnist.train_dataloader()])
    assert len(labels) == 4000 and torch.bincount(labels).tolist() == [400] * 10


def _make_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 30)) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _make_folder(tmp_path, {"cat": 10, "dog": 10, "owl": 10})
    (tmp_path / "notes.txt").write_text("not a class")
    dm = ImageDataModule(dataset="image_folder", root=str(tmp_path), image_size=16, in_chans=1, batch_size=8,
                         val_fraction=0.2, test_fraction=0.2)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "owl"]
    dm.setup()
    sizes = [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)]
    assert sizes == [18, 6, 6]
    image, label = dm.test_dataset[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.uint8
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    assert torch.bincount(labels).tolist() == [2, 2, 2]
    rgb = ImageDataModule(dataset="image_folder", root=str(tmp_path), image_size=12, in_chans=3, num_classes=3)
    rgb.setup()
    assert rgb.val_dataset[0][0].shape == (3, 12, 12)


def test_image_folder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ImageDataModule(dataset="image_folder", root=str(missing)).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty)) + ".*root/<class>/<image>.png"):
        ImageDataModule(dataset="image_folder", root=str(empty)).setup()
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="no images.*root/<class>/<image>.png"):
        ImageDataModule(dataset="image_folder", root=str(empty)).setup()
    one = tmp_path / "one"
    _make_folder(one, {"only": 3})
    with pytest.raises(ValueError, match="at least 2 classes"):
        ImageDataModule(dataset="image_folder", root=str(one)).setup()
    two = tmp_path / "two"
    _make_folder(two, {"a": 5, "b": 5})
    with pytest.raises(ValueError, match="num_classes=5 .*2 classes"):
        ImageDataModule(dataset="image_folder", root=str(two), num_classes=5).setup()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'.*mnist, fashion_mnist, cifar10, image_folder"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"val_fraction": 1.5}, "val_fraction=1.5.*between 0 and 1"),
        ({"test_fraction": 0.0}, "test_fraction=0.0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"in_chans": 2}, "in_chans=2.*1 .*or 3"),
        ({"num_classes": 5}, "num_classes=5 but dataset 'mnist' has 10 classes"),
    ],
)
def test_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ImageDataModule(**kwargs)


def test_cifar10_offline_message(tmp_path: Path) -> None:
    dm = ImageDataModule(dataset="cifar10", root=str(tmp_path), image_size=32, in_chans=3, download=False)
    with pytest.raises(RuntimeError, match=r"cifar10.*cifar-10-batches-py.*data_batch_1.*download=True") as info:
        dm.setup()
    assert str(tmp_path) in str(info.value)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_from_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(di, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x, train_y = rng.integers(0, 256, (40, 28, 28)), np.repeat(np.arange(10), 4)
    test_x, test_y = rng.integers(0, 256, (10, 28, 28)), np.arange(10)
    for stem, array in zip(
        (*di.FASHION_FILES["train"], *di.FASHION_FILES["test"]), (train_x, train_y, test_x, test_y)
    ):
        _write_idx(raw / f"{stem}.gz", array)
    dm = ImageDataModule(dataset="fashion_mnist", root=str(tmp_path), download=False, val_fraction=0.25)
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [30, 10, 10]
    image, label = dm.test_dataset[3]
    assert image.shape == (1, 28, 28) and torch.equal(image[0], torch.tensor(test_x[3], dtype=torch.uint8))
    assert int(label) == 3
    assert dm.class_names[0] == "T-shirt/top"


def test_fashion_mnist_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(di, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    dm = ImageDataModule(dataset="fashion_mnist", root=str(tmp_path), download=False)
    with pytest.raises(RuntimeError, match="fashion_mnist.*train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        dm.setup()


@pytest.mark.skipif(not (di.DEBIAN_FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    dm = ImageDataModule(dataset="fashion_mnist", root=str(tmp_path), download=False)
    dm.setup()
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [54000, 6000, 10000]
    assert torch.bincount(dm.test_dataset.tensors[1]).tolist() == [1000] * 10


def test_configs_match_constructor() -> None:
    import inspect

    params = set(inspect.signature(ImageDataModule.__init__).parameters) - {"self"}
    for name in ("mnist", "fashion_mnist", "cifar10", "image_folder"):
        cfg = yaml.safe_load((REPO / "configs" / "data" / f"{name}.yaml").read_text())
        assert cfg.pop("_target_") == "data.images.ImageDataModule"
        cfg.pop("defaults", None)  # Hydra's list (fashion_mnist pulls experiment/vit_fashion)
        assert set(cfg) == params, name
        assert cfg["dataset"] == name
    mnist = yaml.safe_load((REPO / "configs" / "data" / "mnist.yaml").read_text())
    assert (mnist["image_size"], mnist["in_chans"], mnist["num_classes"]) == (28, 1, 10)
    # the YAML values themselves construct a valid module (root is unused by mnist)
    ImageDataModule(**{k: v for k, v in mnist.items() if k not in ("_target_", "root")})
