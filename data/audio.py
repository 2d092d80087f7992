"""Audio classification data for the zoo: one `LightningDataModule` for three sources of 1 s clips.

* ``keywords`` (default): spoken keywords synthesised offline with espeak-ng (`data/keywords.py`);
  test clips are spoken by voices never heard in training. Synthesized speech, not recordings.
* ``speech_commands``: Google Speech Commands v0.02 via torchaudio's SPEECHCOMMANDS (downloaded into
  ``root`` when allowed), mapped to the same 12 classes: the ten keywords, ``_unknown_`` (the other
  25 words, subsampled to the size of a keyword class) and ``_silence_`` (1 s slices of its
  background-noise recordings). Official validation / testing lists.
* ``audio_folder``: ``root/<class>/<clip>.wav|flac|ogg``, read with soundfile, mixed down to mono,
  resampled to ``sample_rate``; seeded stratified split.

Batches are ``(float32 waveforms (B, samples) in [-1, 1], int64 labels)``: the model computes its
own log-mel spectrogram. Clips are padded / centre-cropped to ``clip_seconds``. Training batches get
a random time shift (zero-filled) of up to ``shift_seconds`` and, when ``speed_range`` is set, a random
speed perturbation (off by default: on the keywords, VTLP in the model generalises better).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from data.distributed import eval_sampler, loader_options
from data.folders import ClassFolders
from data.images import stratified_split
from data.keywords import CLASSES, KEYWORDS, SILENCE, UNKNOWN, KeywordSpec, load_keywords
from utils.errors import FileFormatError, MissingDataError, MissingFileError, UserError

log = logging.getLogger(__name__)

DATASETS = ("keywords", "speech_commands", "audio_folder")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
AUDIO_FOLDER_LAYOUT = "root/<class>/<clip>.wav|flac|ogg (one sub-folder per class, clips inside)"


def duration_text(seconds: float) -> str:
    """A length in seconds as the notes print it: 3 significant digits (0.5, 31, 66.5), whole seconds from 1,000
    on (1,001, not 1e+03)."""
    return f"{seconds:.3g}" if seconds < 1000 else f"{seconds:,.0f}"


def read_audio(path: str | os.PathLike, sample_rate: int, notes: list[str] | None = None) -> Tensor:
    """Mono float32 waveform of a file at `sample_rate`; errors name the file. What was adapted (channels
    mixed, resampled) is appended to `notes` when given."""
    import soundfile as sf
    import torchaudio.functional as AF

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError by format
        raise FileFormatError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from e
    if data.shape[0] == 0:
        raise FileFormatError(f"empty audio file (0 samples): {path}")
    _refuse_non_finite(data, rate, path)
    if notes is not None:
        if data.shape[1] > 1:
            notes.append(f"mixed {data.shape[1]} channels to mono")
        if rate != sample_rate:
            notes.append(f"resampled from {rate} Hz to {sample_rate} Hz")
        peak = float(np.abs(data).max())
        if peak > 1:
            notes.append(f"samples reach {peak:.3g}, beyond the usual [-1, 1]; used as they are")
    wave = torch.from_numpy(data.mean(axis=1))
    return AF.resample(wave, rate, sample_rate) if rate != sample_rate else wave


def _refuse_non_finite(data: np.ndarray, rate: int, path: str | os.PathLike) -> None:
    """NaN / inf samples (possible in float wav files) would reach the model as NaN probabilities, or in
    training as a NaN loss that names no file."""
    bad = ~np.isfinite(data)
    if bad.any():
        first = int(np.flatnonzero(bad.any(axis=1))[0])
        raise FileFormatError(f"audio file {path} holds {int(bad.sum())} NaN or infinite sample(s), the first at "
                              f"{first / rate:.3f} s; expected finite samples")


def check_audio(path: str | os.PathLike) -> None:
    """Check that a file is readable audio with at least one sample, and, for float formats (the ones that
    can hold them), no NaN / inf samples. Integer formats are checked from the header alone."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise FileFormatError(f"cannot read audio file {path}: {type(e).__name__}: {e}") from e
    if info.frames == 0:
        raise FileFormatError(f"empty audio file (0 samples): {path}")
    if info.subtype in ("FLOAT", "DOUBLE"):
        read_audio(path, info.samplerate)


def fit_length(wave: Tensor, n: int) -> Tensor:
    """Zero-pad at the end, or keep the middle `n` samples."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start:start + n]
    return torch.nn.functional.pad(wave, (0, n - len(wave)))


class AudioFiles(Dataset):
    """(path, label) list -> (float32 waveform (samples,), label), decoded lazily."""

    def __init__(self, samples: list[tuple[str, int]], sample_rate: int, num_samples: int,
                 offsets: list[int] | None = None) -> None:
        self.samples, self.sample_rate, self.num_samples = samples, sample_rate, num_samples
        self.offsets = offsets  # per sample: start of the slice to cut from a long file (silence clips)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.samples[i]
        wave = read_audio(path, self.sample_rate)
        if self.offsets is not None and self.offsets[i] >= 0:
            wave = wave[self.offsets[i]: self.offsets[i] + self.num_samples]
        return fit_length(wave, self.num_samples), label


class AudioBatch:
    """collate_fn: int16 or float samples -> float32 (B, samples) in [-1, 1], then (training) a random speed
    perturbation in `speed_range` and a random shift of up to `max_shift` samples, each clip its own."""

    def __init__(self, max_shift: int = 0, generator: torch.Generator | None = None,
                 speed_range: tuple[float, float] | None = None) -> None:
        self.max_shift, self.generator, self.speed_range = max_shift, generator, speed_range

    def __call__(self, samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        waves = torch.stack([s[0] for s in samples])
        waves = waves.float() / 32768.0 if waves.dtype == torch.int16 else waves.float()
        labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
        if self.speed_range is not None:
            low, high = self.speed_range
            speeds = low + (high - low) * torch.rand(len(waves), generator=self.generator)
            waves = speed_perturb(waves, speeds)
        if self.max_shift > 0:
            waves = random_shift(waves, self.max_shift, self.generator)
        return waves, labels


def random_shift(waves: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each clip by its own whole number of samples in [-max_shift, max_shift], zero-filled."""
    b, n = waves.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator)
    src = torch.arange(n)[None, :] - shift  # output sample t comes from input sample t - shift
    valid = (src >= 0) & (src < n)
    return torch.where(valid, waves.gather(1, src.clamp(0, n - 1)), torch.zeros(()))


# Speeds are rounded to multiples of 1 / SPEED_STEPS: each is then the small ratio SPEED_STEPS : k, whose
# polyphase resampling kernel is small (a ratio like 16000 : 18437 is ~1,000x dearer), and a batch needs
# only as many resampling calls as it has distinct speeds.
SPEED_STEPS = 20


def speed_perturb(waves: Tensor, speeds: Tensor) -> Tensor:
    """Play clip i `speeds[i]` times faster, by resampling (torchaudio): its duration is divided and every
    frequency multiplied by the speed (pitch and formants, as a shorter or longer vocal tract; Ko et al.
    2015). The result is centre-cropped or zero-padded back to the input length, so a word near the middle
    stays there. Speeds are rounded to multiples of 1 / SPEED_STEPS."""
    import torchaudio.functional as AF

    b, n = waves.shape
    if speeds.shape != (b,) or not (speeds > 0).all():
        raise ValueError(f"speeds must be {b} positive numbers (one per clip), got {speeds.tolist()}")
    steps = torch.round(speeds * SPEED_STEPS).long().clamp(min=1)
    out = waves.clone()
    for k in steps.unique().tolist():
        if k == SPEED_STEPS:
            continue
        idx = (steps == k).nonzero()[:, 0]
        # Read the clip as if sampled k / SPEED_STEPS times faster, then resample it to the true rate.
        faster = AF.resample(waves[idx], orig_freq=k, new_freq=SPEED_STEPS)  # (len(idx), ~n / speed)
        pad = n - faster.shape[-1]  # > 0: pad, < 0: crop (F.pad crops on negative padding)
        out[idx] = torch.nn.functional.pad(faster, (pad // 2, pad - pad // 2))
    return out


class ClipLoaders:
    """val / test loaders of a clip data module (unaugmented batches) and the `_loader` its train loader uses."""

    def val_dataloader(self) -> DataLoader:
        return self.split_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.split_dataloader("test")

    def split_dataloader(self, split: str) -> DataLoader:
        """One split ("train", "val" or "test") in a fixed order and without augmentation, as the model hears
        it at test time (frozen-feature probes read the training split so)."""
        datasets = {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}
        return self._loader(datasets[split], AudioBatch(), shuffle=False)

    def _loader(self, dataset: Dataset | None, collate: AudioBatch, shuffle: bool) -> DataLoader:
        return clip_loader(self, dataset, collate, shuffle)


class AudioDataModule(ClassFolders, ClipLoaders, L.LightningDataModule):
    """Audio classification data; every constructor argument is a key of configs/data/*.yaml.

    After `setup()`: `train_dataset`, `val_dataset`, `test_dataset` and the three loaders, yielding
    `(float32 (B, sample_rate * clip_seconds) waveforms, int64 labels)`. `num_classes` /
    `class_names` are known before setup (audio_folder scans its class sub-folders).
    """

    modality = "audio"  # the kind of input it yields: a network of the same modality trains on it

    FOLDER_DATASET = "audio_folder"  # where class_names come from a folder (data.folders.ClassFolders)
    FOLDER_LAYOUT = AUDIO_FOLDER_LAYOUT

    def __init__(
        self,
        dataset: str = "keywords",
        root: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        num_classes: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        shift_seconds: float = 0.1,
        speed_range: tuple[float, float] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        download: bool = True,
        train_per_class: int = 300,
        val_per_class: int = 50,
        test_per_class: int = 100,
        words: list[str] | None = None,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
        for name, value, low in (("sample_rate", sample_rate, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0), ("train_per_class", train_per_class, 1),
                                 ("val_per_class", val_per_class, 1), ("test_per_class", test_per_class, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds={clip_seconds!r}; expected > 0")
        if not 0 <= shift_seconds < clip_seconds:
            raise ValueError(f"shift_seconds={shift_seconds!r}; expected in [0, clip_seconds={clip_seconds})")
        if speed_range is not None:
            speed_range = tuple(float(v) for v in speed_range)  # Hydra passes a ListConfig
            if len(speed_range) != 2 or not 0 < speed_range[0] <= speed_range[1]:
                raise ValueError(f"speed_range={list(speed_range)!r}; expected [low, high] with 0 < low <= high")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < value < 1:
                raise ValueError(f"{name}={value!r}; expected a number strictly between 0 and 1")
        if words is not None:
            words = [str(w) for w in words]  # Hydra passes a ListConfig
            if dataset != "keywords":
                raise ValueError(f"words={words!r} is for dataset 'keywords' (the vocabulary espeak-ng speaks), "
                                 f"not {dataset!r}")
            if len(words) < 2 or len(set(words)) != len(words) or not all(w.strip() for w in words):
                raise ValueError(f"words={words!r}; expected at least 2 different, non-empty words")
        classes = tuple(words) if words is not None else CLASSES
        fixed = len(classes) if dataset != "audio_folder" else None
        if num_classes is not None and fixed is not None and num_classes != fixed:
            raise ValueError(f"num_classes={num_classes} but dataset {dataset!r} has {fixed} classes")
        self.save_hyperparameters()
        self.dataset, self.root, self.sample_rate, self.clip_seconds = dataset, root, sample_rate, clip_seconds
        self.num_samples = int(round(sample_rate * clip_seconds))
        self.batch_size, self.num_workers, self.seed, self.augment = batch_size, num_workers, seed, augment
        self.max_shift = int(round(shift_seconds * sample_rate)) if augment else 0
        self.speed_range = speed_range if augment else None
        self.val_fraction, self.test_fraction, self.download = val_fraction, test_fraction, download
        self.spec = KeywordSpec(train_per_class, val_per_class, test_per_class, sample_rate, clip_seconds, seed,
                                words=tuple(words) if words is not None else None)
        self._requested_classes = num_classes
        self._class_names: list[str] | None = list(classes) if fixed else None
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self.test_voices: list[str] | None = None  # keywords: who speaks each test clip

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup() runs on every process: under DDP the
        # keyword clips are synthesised once (per node), not once per GPU; setup() then reads the cache.
        if self.dataset == "keywords" and self.root:
            load_keywords(self.root, self.spec, log=log.info)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:  # Lightning calls setup once per stage; the data never changes
            return
        if self.dataset == "keywords":
            if not self.root:
                raise UserError("dataset 'keywords' needs root=<folder> to cache the generated clips in")
            arrays = load_keywords(self.root, self.spec, log=log.info)
            parts = [TensorDataset(torch.from_numpy(arrays[f"{s}_audio"]), torch.from_numpy(arrays[f"{s}_labels"]))
                     for s in ("train", "val", "test")]
            self.train_dataset, self.val_dataset, self.test_dataset = parts
            self.test_voices = [str(v) for v in arrays["test_voices"]]
        elif self.dataset == "speech_commands":
            self.train_dataset, self.val_dataset, self.test_dataset = self._speech_commands()
        else:
            self._setup_audio_folder()

    def train_dataloader(self) -> DataLoader:
        augment_rng = torch.Generator().manual_seed(self.seed + 1)
        collate = AudioBatch(self.max_shift, augment_rng, self.speed_range)
        return self._loader(self.train_dataset, collate, shuffle=True)


    # -- audio_folder

    def _setup_audio_folder(self) -> None:
        names = self.class_names  # validates root and num_classes
        root = Path(self.root).expanduser()  # type: ignore[arg-type]
        samples = [(str(p), label) for label, name in enumerate(names) for p in sorted((root / name).rglob("*"))
                   if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
        counts = np.bincount([label for _, label in samples], minlength=len(names))
        if (counts == 0).any():
            empty = [n for n, c in zip(names, counts) if c == 0]
            raise MissingFileError(f"audio_folder: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class "
                                    f"folder(s) {', '.join(empty)} of {root}; expected {AUDIO_FOLDER_LAYOUT}")
        for path, _ in samples:  # fail now, with the path, rather than in the middle of an epoch
            check_audio(path)
        full = AudioFiles(samples, self.sample_rate, self.num_samples)
        labels = np.array([label for _, label in samples])
        parts = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed, names)
        self.train_dataset, self.val_dataset, self.test_dataset = (Subset(full, idx.tolist()) for idx in parts)

    # -- speech_commands

    def _speech_commands(self) -> tuple[Dataset, Dataset, Dataset]:
        import soundfile as sf
        from torchaudio.datasets import SPEECHCOMMANDS

        how = ("To get it: run once with data.download=true and internet access (2.3 GB, into root), or download "
               "speech_commands_v0.02.tar.gz and extract it into <root>/SpeechCommands/speech_commands_v0.02")
        if not self.root:
            raise UserError(f"dataset 'speech_commands' needs root=<folder> holding (or to download) it. {how}.")
        Path(self.root).expanduser().mkdir(parents=True, exist_ok=True)
        try:
            subsets = [SPEECHCOMMANDS(str(Path(self.root).expanduser()), download=self.download, subset=s)
                       for s in ("training", "validation", "testing")]
        except (OSError, RuntimeError) as e:  # offline: URLError (an OSError); missing files: RuntimeError
            raise MissingDataError(
                f"dataset 'speech_commands' not found in {Path(self.root).expanduser() / 'SpeechCommands'} "
                f"(download={self.download}; {type(e).__name__}: {str(e).strip()[:300]}). {how}."
            ) from e
        index = {name: i for i, name in enumerate(CLASSES)}
        rng = np.random.default_rng(self.seed)
        noise_files = sorted(Path(subsets[0]._path, "_background_noise_").glob("*.wav"))
        parts = []
        for ds in subsets:
            paths = list(ds._walker)  # full paths; the label is the parent folder's name
            labels = np.array([index.get(Path(p).parent.name, index[UNKNOWN]) for p in paths])
            per_class = int(np.bincount(labels, minlength=len(CLASSES))[: len(KEYWORDS)].mean())
            unknown = np.flatnonzero(labels == index[UNKNOWN])
            keep = np.sort(np.concatenate([np.flatnonzero(labels != index[UNKNOWN]),
                                           rng.choice(unknown, min(per_class, len(unknown)), replace=False)]))
            samples = [(paths[i], int(labels[i])) for i in keep]
            offsets = [-1] * len(samples)
            for _ in range(per_class if noise_files else 0):  # silence: random 1 s slices of the noise files
                f = noise_files[rng.integers(len(noise_files))]
                frames = sf.info(str(f)).frames * self.sample_rate // sf.info(str(f)).samplerate
                samples.append((str(f), index[SILENCE]))
                offsets.append(int(rng.integers(max(1, frames - self.num_samples))))
            parts.append(AudioFiles(samples, self.sample_rate, self.num_samples, offsets))
        return parts[0], parts[1], parts[2]


def clip_loader(module: L.LightningDataModule, dataset: Dataset | None, collate: AudioBatch,
                shuffle: bool) -> DataLoader:
    """The loader of a clip data module (its batch_size, seed, num_workers): shuffled by a seeded generator in
    training, each clip once per process in evaluation (DDP)."""
    if dataset is None:
        raise RuntimeError("call setup() before asking for a dataloader")
    trainer = getattr(module, "trainer", None)
    return DataLoader(dataset, batch_size=module.batch_size, shuffle=shuffle, collate_fn=collate,
                      sampler=None if shuffle else eval_sampler(dataset, trainer),  # DDP: each clip once
                      generator=torch.Generator().manual_seed(module.seed) if shuffle else None,
                      **loader_options(module.num_workers, trainer))


__all__ = ["AudioBatch", "AudioDataModule", "ClipLoaders", "clip_loader", "read_audio", "random_shift", "speed_perturb"]
