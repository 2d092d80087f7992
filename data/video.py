"""Video classification data: one `LightningDataModule` for two sources.

* ``moving_digits`` (default): clips generated in memory (~0.2 s) from the 5,000 embedded MNIST
  digits (data/images.py), labelled by motion only; see data/moving_digits.py. Digits follow the
  MNIST split of the image data (same seed and fractions): train clips use train digits, val clips
  val digits, test clips test digits, so no digit is shared between splits.
* ``video_folder``: ``root/<class>/<video>.mp4|avi|webm|mkv|mov`` decoded with PyAV (``pip install av``),
  ``num_frames`` frames sampled uniformly over each video, resized to ``image_size``.

Two controls for any source, applied to train, val and test alike:
``shuffle_frames`` permutes the frames of every clip in time (a fixed, seeded permutation per clip),
``single_frame`` keeps the first frame only. Batches are float32 (B, in_chans, T, H, W), normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from data.distributed import EpochSubsetSampler, eval_sampler, loader_options
from data.folders import ClassFolders
from data.images import load_mnist_5k, refuse_bad_files, stratified_split
from data.moving_digits import CLASS_NAMES, check_geometry, make_moving_digits
from utils.errors import FileFormatError, MissingFileError

DATASETS = ("moving_digits", "video_folder")
# .m4v: an MPEG-4 file by another name; .gif: an animated GIF is a clip (PyAV decodes its frames; a still one
# is refused for having too few)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif")
VIDEO_FOLDER_LAYOUT = "root/<class>/<video>.mp4 (one sub-folder per class, videos inside)"


def read_video(path: str | Path, num_frames: int, image_size: int, in_chans: int,
               notes: list[str] | None = None) -> Tensor:
    """uint8 (in_chans, num_frames, image_size, image_size): frames sampled uniformly over the whole video.

    Every frame is scaled down by FFmpeg as it is decoded, so a long video costs little memory.
    A file PyAV cannot decode, or one with fewer than `num_frames` frames, raises FileFormatError naming it.
    What was adapted (frames sampled, resized) is appended to `notes` when given.
    """
    import av  # optional dependency: only user folders need it

    fmt = "gray" if in_chans == 1 else "rgb24"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                audio = " (it holds audio only)" if container.streams.audio else ""
                raise FileFormatError(f"{path} has no video stream{audio}")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            frames = [f.to_ndarray(width=image_size, height=image_size, format=fmt) for f in container.decode(stream)]
    except av.FFmpegError as e:
        raise FileFormatError(f"cannot decode {path} as a video: {e}") from e
    if len(frames) < num_frames:
        # Repeating frames would silently slow the motion down; the user should pick num_frames instead.
        raise FileFormatError(f"{path} has {len(frames)} decodable frame(s), fewer than num_frames={num_frames} "
                              f"(the clip length the model takes; data.num_frames when training)")
    if notes is not None:
        if len(frames) != num_frames:
            notes.append(f"sampled {num_frames} of {len(frames)} frames evenly")
        if size != (image_size, image_size):
            notes.append(f"frames resized from {size[0]}x{size[1]} to {image_size}x{image_size}")
    picks = np.linspace(0, len(frames) - 1, num_frames).round().astype(int)  # uniform, first and last included
    clip = torch.from_numpy(np.stack([frames[i] for i in picks]))  # (T, H, W) or (T, H, W, 3)
    return clip.unsqueeze(0) if in_chans == 1 else clip.permute(3, 0, 1, 2).contiguous()


def check_video(path: str | Path, num_frames: int) -> str | None:
    """Why `path` is not a usable video (from its header: opens, has a video stream, enough frames where the
    header says), or None. Decoding every frame of every video would cost as much as an epoch."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream" + (" (audio only)" if container.streams.audio else "")
            frames = container.streams.video[0].frames  # 0 when the container does not say
    except av.FFmpegError as e:
        return f"cannot decode: {e}"
    if 0 < frames < num_frames:
        return f"{frames} frame(s), fewer than num_frames={num_frames}"
    return None


class VideoFiles(Dataset):
    """(path, label) list -> (uint8 clip (C, T, H, W), label), decoded lazily."""

    def __init__(self, samples: list[tuple[str, int]], num_frames: int, image_size: int, in_chans: int) -> None:
        self.samples, self.num_frames, self.image_size, self.in_chans = samples, num_frames, image_size, in_chans

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        return read_video(path, self.num_frames, self.image_size, self.in_chans), label


class FrameControl(Dataset):
    """Control experiments on any clip dataset: frames shuffled in time, or a single frame kept.

    The permutation of clip i depends only on (seed, i): the same clip is shuffled the same way in
    every epoch, so "shuffled" is a fixed dataset, not an augmentation.
    """

    def __init__(self, dataset: Dataset, shuffle_frames: bool, single_frame: bool, seed: int) -> None:
        self.dataset, self.shuffle_frames, self.single_frame, self.seed = dataset, shuffle_frames, single_frame, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Any]:
        clip, label = self.dataset[i]  # (C, T, H, W)
        if self.shuffle_frames:
            clip = clip[:, torch.from_numpy(np.random.default_rng([self.seed, i]).permutation(clip.shape[1]))]
        if self.single_frame:
            clip = clip[:, :1]
        return clip, label


class VideoBatch:
    """DataLoader collate_fn: uint8 clips (C, T, H, W) -> normalised float32 (B, C, T, H, W) and labels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def __call__(self, samples: list[tuple[Tensor, Any]]) -> tuple[Tensor, Tensor]:
        # Tiny ops: on busy cores extra intra-op threads only stall (see data.images.ImageBatch).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            clips = torch.stack([s[0] for s in samples]).float().div_(255)
            labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
            return (clips - self.mean) / self.std, labels
        finally:
            torch.set_num_threads(threads)


class VideoDataModule(ClassFolders, L.LightningDataModule):
    """Video classification data; every constructor argument is a key of configs/data/*.yaml.

    After `setup()`: `train_dataset`, `val_dataset`, `test_dataset` (uint8 clips) and the loaders.
    Always available: `num_classes`, `class_names`, `in_chans`, `image_size`, `num_frames`, `mean`, `std`.
    `digit_size` and `train_clips` (null = one clip per train digit) concern moving_digits only.
    `epoch_clips` (null = all) makes a training epoch a fresh random draw of that many clips, so that
    short epochs (validation, checkpoints, the LR schedule) fit the trainer's fixed epoch count.
    """

    modality = "video"  # the kind of input it yields: a network of the same modality trains on it

    FOLDER_DATASET = "video_folder"  # where class_names come from a folder (data.folders.ClassFolders)
    FOLDER_LAYOUT = VIDEO_FOLDER_LAYOUT

    def __init__(
        self,
        dataset: str = "moving_digits",
        root: str | None = None,
        image_size: int = 32,
        num_frames: int = 8,
        in_chans: int = 1,
        num_classes: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_frames: bool = False,
        single_frame: bool = False,
        digit_size: int = 16,
        train_clips: int | None = None,
        epoch_clips: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        for name, value, low in (("image_size", image_size, 1), ("num_frames", num_frames, 1),
                                 ("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans!r}; expected 1 (grayscale) or 3 (RGB)")
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(f"val_fraction={val_fraction}, test_fraction={test_fraction}; expected each in (0, 1), "
                             f"sum < 1")
        if dataset == "moving_digits":
            check_geometry(num_frames, image_size, digit_size)
            if in_chans != 1:
                raise ValueError(f"moving_digits is grayscale: in_chans must be 1, got {in_chans}")
            if num_classes is not None and num_classes != len(CLASS_NAMES):
                raise ValueError(f"num_classes={num_classes} but moving_digits has {len(CLASS_NAMES)} classes")
            if train_clips is not None and train_clips < len(CLASS_NAMES):
                raise ValueError(f"train_clips={train_clips}; expected null or >= {len(CLASS_NAMES)}")
        if epoch_clips is not None and (not isinstance(epoch_clips, int) or epoch_clips < 1):
            raise ValueError(f"epoch_clips={epoch_clips!r}; expected null (all training clips) or an integer >= 1")
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != in_chans or len(std) != in_chans
                                                                     or min(std) <= 0)):
            raise ValueError(f"mean={mean}, std={std}: expected both or neither, {in_chans} values each, std > 0")
        # Plain floats (Hydra passes a ListConfig): saved hyperparameters must load with weights_only.
        mean, std = (None if v is None else [float(x) for x in v] for v in (mean, std))
        self.save_hyperparameters()
        self.dataset, self.root, self.image_size, self.num_frames = dataset, root, image_size, num_frames
        self.in_chans, self.batch_size, self.num_workers, self.seed = in_chans, batch_size, num_workers, seed
        self.shuffle_frames, self.single_frame = shuffle_frames, single_frame
        self.digit_size, self.train_clips, self.epoch_clips = digit_size, train_clips, epoch_clips
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._requested_classes = num_classes
        self._class_names: list[str] | None = list(CLASS_NAMES) if dataset == "moving_digits" else None
        # [0, 1] -> [-1, 1] for user videos; moving_digits replaces this with its train-set statistics.
        self.mean, self.std = (0.5,) * in_chans, (0.5,) * in_chans
        if mean is not None and std is not None:  # a pretrained model's normalisation (utils/pretrained.py)
            self.mean, self.std = tuple(mean), tuple(std)
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:  # Lightning calls setup once per stage; the data never changes
            return
        parts = self._moving_digits() if self.dataset == "moving_digits" else self._video_folder()
        # A different seed per split: the val/test shuffles must not repeat the train ones clip for clip.
        self.train_dataset, self.val_dataset, self.test_dataset = (
            FrameControl(p, self.shuffle_frames, self.single_frame, self.seed * 3 + k) for k, p in enumerate(parts)
        )

    def prepare_predict(self) -> None:
        """Ready to read a user's clip: moving_digits normalises with its training clips' statistics (~0.3 s)."""
        if self.dataset == "moving_digits":
            self.setup("predict")

    def _moving_digits(self) -> list[Dataset]:
        images, labels = load_mnist_5k()
        splits = stratified_split(labels.numpy(), self.val_fraction, self.test_fraction, self.seed)
        sizes = [self.train_clips or len(splits[0]), len(splits[1]), len(splits[2])]
        parts = []
        for k, (idx, n) in enumerate(zip(splits, sizes)):
            md = make_moving_digits(images[torch.from_numpy(idx)], n, self.num_frames, self.image_size,
                                    self.digit_size, seed=self.seed * 3 + k)
            parts.append(TensorDataset(md.clips, md.labels))
            if k == 0:  # normalise with the statistics of the training clips
                pixels = md.clips.float().div_(255)
                self.mean, self.std = (pixels.mean().item(),), (pixels.std().item(),)
        return parts

    def _video_folder(self) -> list[Dataset]:
        from torchvision.datasets.folder import make_dataset

        names = self.class_names  # validates the root and num_classes
        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        samples = make_dataset(str(root), {n: i for i, n in enumerate(names)}, extensions=VIDEO_EXTENSIONS,
                               allow_empty=True)
        counts = np.bincount([label for _, label in samples], minlength=len(names))
        if (counts == 0).any():
            empty = [n for n, c in zip(names, counts) if c == 0]
            raise MissingFileError(f"video_folder: no videos ({', '.join(VIDEO_EXTENSIONS)}) in class folder(s) "
                                    f"{', '.join(empty)} of {root}; expected {VIDEO_FOLDER_LAYOUT}")
        # Checked now, so that a damaged file stops the run before training, with its name.
        refuse_bad_files("video_folder", [(p, check_video(p, self.num_frames)) for p, _ in samples], "videos")
        full = VideoFiles(samples, self.num_frames, self.image_size, self.in_chans)
        labels = np.array([label for _, label in samples])
        splits = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed, names)
        return [Subset(full, idx.tolist()) for idx in splits]

    def train_dataloader(self) -> DataLoader:
        if self.epoch_clips is None:
            return self._loader(self.train_dataset, shuffle=True)
        if self.train_dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        # Each epoch a fresh random subset of epoch_clips distinct clips (seeded: the same run twice is the same),
        # under DDP shared among the processes (Lightning would otherwise draw the whole split every epoch).
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSubsetSampler(self.train_dataset, num_samples=self.epoch_clips, num_replicas=world, rank=rank,
                                     generator=torch.Generator().manual_seed(self.seed))
        return self._loader(self.train_dataset, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, evaluate=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False, evaluate=True)

    def _loader(self, dataset: Dataset | None, shuffle: bool, sampler: Sampler | None = None,
                evaluate: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        trainer = getattr(self, "trainer", None)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=eval_sampler(dataset, trainer) if evaluate else sampler,
            collate_fn=VideoBatch(self.mean, self.std),
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            **loader_options(self.num_workers, trainer),
        )

__all__ = ["FrameControl", "VideoBatch", "VideoDataModule", "VideoFiles", "read_video"]
