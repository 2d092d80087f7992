"""The Free Spoken Digit Dataset (FSDD): real recordings of people saying the digits 0-9, split by speaker.

``root`` is the dataset's ``recordings/`` folder (github.com/Jakobovski/free-spoken-digit-dataset): files named
``{digit}_{speaker}_{index}.wav`` (8 kHz, 16-bit, mono; 3,000 files of six speakers in the release). The label is
the file name's digit, class names ``zero`` ... ``nine`` (the order of the synthesized digits of
``data=keywords data.words=[zero,...,nine]``, so a model trained on one is tested on the other as it is).

The split is by whole speakers: ``test_speaker`` is held out for test, ``val_speaker`` for validation, every
other speaker found trains. No speaker is in two splits. ``val_speaker=None`` trains on every other speaker and
validates on a tenth of their takes (index 9, 19, ...; ``is_val_take``), which training leaves out: the test
speaker is still never heard.

Clips are handled like the keyword data's: read with soundfile, resampled to ``sample_rate`` with torchaudio,
placed in the middle of a ``clip_seconds`` clip (zero-padded on both sides; a longer recording keeps its middle),
batches of ``(float32 (B, samples) waveforms, int64 labels)``, what ``model=audio`` takes. Training batches get
the data module's random time shift, optional speed perturbation (``data/audio.py``) and an optional random gain;
``peak`` scales every recording to that peak level first (null: as recorded). All clips are read once into
memory in ``setup()`` (3,000 files: ~100 MB at 16 kHz, a few seconds).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from data.audio import AudioBatch, ClipLoaders, read_audio
from utils.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILE_PATTERN = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
LAYOUT = "{digit}_{speaker}_{index}.wav files, as in FSDD's recordings/ folder (e.g. 7_jackson_32.wav)"


def scan(root: str | Path | None) -> list[tuple[Path, int, str, int]]:
    """(path, digit, speaker, index) of every `{digit}_{speaker}_{index}.wav` in `root`, sorted by path;
    one-line errors for a missing root or a folder without such files."""
    if not root:
        raise UserError(f"data=fsdd needs data.root=<folder> holding {LAYOUT}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise MissingFileError(f"data=fsdd: data.root={path} does not exist or is not a folder; expected a folder "
                               f"of {LAYOUT}")
    files = []
    for p in sorted(path.iterdir()):
        m = FILE_PATTERN.match(p.name)
        if m and p.is_file():
            files.append((p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not files:
        raise MissingFileError(f"data=fsdd: no {{digit}}_{{speaker}}_{{index}}.wav files in {path}; expected "
                               f"{LAYOUT}")
    return files


def split_speakers(speakers: list[str], test_speaker: str, val_speaker: str | None) -> dict[str, list[str]]:
    """{"train": [...], "val": [val_speaker], "test": [test_speaker]}; errors name the speakers found. With
    val_speaker None, val is the training speakers (their takes `is_val_take`, which train leaves out)."""
    found = sorted(set(speakers))
    held = {"test_speaker": test_speaker} if val_speaker is None else {"test_speaker": test_speaker,
                                                                      "val_speaker": val_speaker}
    for key, name in held.items():
        if name not in found:
            raise UserError(f"data=fsdd: data.{key}={name!r} is not a speaker of the folder; speakers found: "
                            f"{', '.join(found)}")
    if test_speaker == val_speaker:
        raise UserError(f"data=fsdd: data.test_speaker and data.val_speaker are both {test_speaker!r}; hold out two "
                        f"different speakers (found: {', '.join(found)})")
    train = [s for s in found if s not in held.values()]
    if not train:
        raise UserError(f"data=fsdd: no speaker left to train on: the folder holds only {', '.join(found)}, "
                        f"held out as {' and '.join(k.split('_')[0] for k in held)}")
    return {"train": train, "val": list(train) if val_speaker is None else [val_speaker], "test": [test_speaker]}


def is_val_take(index: int) -> bool:
    """With data.val_speaker=null: the takes that validate (index 9, 19, ..., 49: a tenth of every training
    speaker's takes of every digit); training reads the others."""
    return index % 10 == 9


def place(wave: Tensor, n: int) -> Tensor:
    """The recording in the middle of an `n`-sample clip (zero-padded on both sides), or its middle `n`."""
    if len(wave) >= n:
        start = (len(wave) - n) // 2
        return wave[start:start + n]
    left = (n - len(wave)) // 2
    return torch.nn.functional.pad(wave, (left, n - len(wave) - left))


def to_int16(waves: Tensor) -> Tensor:
    """Float samples in [-1, 1] -> int16, as the clips are kept in memory."""
    return (waves * 32767).round().clamp(-32768, 32767).to(torch.int16)


class GainBatch(AudioBatch):
    """AudioBatch (speed perturbation, time shift) then each clip x a random gain in `gain_db` dB, clipped to [-1, 1]."""

    def __init__(self, max_shift: int = 0, generator: torch.Generator | None = None,
                 speed_range: tuple[float, float] | None = None, gain_db: tuple[float, float] | None = None) -> None:
        super().__init__(max_shift, generator, speed_range)
        self.gain_db = gain_db

    def __call__(self, samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
        waves, labels = super().__call__(samples)
        if self.gain_db is not None:
            low, high = self.gain_db
            db = low + (high - low) * torch.rand(len(waves), 1, generator=self.generator)
            waves = (waves * 10 ** (db / 20)).clamp(-1, 1)
        return waves, labels


def _range(name: str, value, allow_negative: bool = False) -> tuple[float, float] | None:
    if value is None:
        return None
    value = tuple(float(v) for v in value)  # Hydra passes a ListConfig
    if len(value) != 2 or value[0] > value[1] or (not allow_negative and not value[0] > 0):
        expected = "[low, high] with low <= high" + ("" if allow_negative else " and 0 < low")
        raise ValueError(f"{name}={list(value)!r}; expected {expected}")
    return value  # type: ignore[return-value]


class FSDDDataModule(ClipLoaders, L.LightningDataModule):
    """FSDD digits, split by speaker; every constructor argument is a key of configs/data/fsdd.yaml.

    When built: `files` (path, digit, speaker, index) and `speakers` ({split: [names]}), checked. After `setup()`:
    `train_dataset`, `val_dataset`, `test_dataset` (int16 clips in memory) and, per split, the speaker and file of every clip (`clip_speakers`, `clip_files`).
    """

    modality = "audio"  # the kind of input it yields: a network of the same modality trains on it

    def __init__(
        self,
        dataset: str = "fsdd",
        root: str | None = None,
        test_speaker: str = "george",
        val_speaker: str = "jackson",
        sample_rate: int = 16000,
        clip_seconds: float = 1.0,
        num_classes: int | None = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        shift_seconds: float = 0.1,
        speed_range: tuple[float, float] | None = None,
        gain_db: tuple[float, float] | None = None,
        peak: float | None = None,
        synthetic_per_class: int = 0,
        synthetic_root: str | None = None,
    ) -> None:
        super().__init__()
        if dataset != "fsdd":
            raise ValueError(f"dataset={dataset!r}; this data module reads 'fsdd'")
        for name, value, low in (("sample_rate", sample_rate, 1), ("batch_size", batch_size, 1),
                                 ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}={value!r}; expected an integer >= {low}")
        if num_classes is not None and num_classes != len(DIGITS):
            raise ValueError(f"num_classes={num_classes} but FSDD has {len(DIGITS)} classes (the digits 0-9)")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds={clip_seconds!r}; expected > 0")
        if not 0 <= shift_seconds < clip_seconds:
            raise ValueError(f"shift_seconds={shift_seconds!r}; expected in [0, clip_seconds={clip_seconds})")
        if not isinstance(synthetic_per_class, int) or isinstance(synthetic_per_class, bool) or synthetic_per_class < 0:
            raise ValueError(f"synthetic_per_class={synthetic_per_class!r}; expected an integer >= 0 (espeak-ng "
                             f"clips per digit added to training, 0 = none)")
        if synthetic_per_class and synthetic_root is None:
            raise ValueError("synthetic_per_class > 0 needs synthetic_root, the folder that caches the generated clips")
        if peak is not None and not 0 < peak <= 1:
            raise ValueError(f"peak={peak!r}; expected a level in (0, 1], or null to keep the recorded level")
        # Plain tuples before save_hyperparameters: a ListConfig in a checkpoint fails torch.load(weights_only=True)
        self.speed_range = speed_range = _range("speed_range", speed_range)
        self.gain_db = gain_db = _range("gain_db", gain_db, allow_negative=True)
        self.save_hyperparameters()
        self.root, self.test_speaker = root, str(test_speaker)
        self.val_speaker = None if val_speaker is None else str(val_speaker)
        self.sample_rate, self.clip_seconds = sample_rate, clip_seconds
        self.num_samples = int(round(sample_rate * clip_seconds))
        self.batch_size, self.num_workers, self.seed, self.augment = batch_size, num_workers, seed, augment
        self.max_shift = int(round(shift_seconds * sample_rate)) if augment else 0
        self.peak = peak
        self.synthetic_per_class, self.synthetic_root = synthetic_per_class, synthetic_root
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        # The folder and the speakers are checked now, before a model or a logger is built (a listing: fast).
        self.files = scan(root)
        self.speakers = split_speakers([f[2] for f in self.files], self.test_speaker, self.val_speaker)
        if self.val_speaker is None:
            takes = [is_val_take(f[3]) for f in self.files if f[2] != self.test_speaker]
            if not any(takes) or all(takes):
                raise UserError(f"data=fsdd: data.val_speaker=null validates on the takes numbered 9, 19, 29, ... of "
                                f"the training speakers and trains on the others; {root} has "
                                f"{'none of the first' if not any(takes) else 'only those'} (name a val speaker "
                                f"instead)")
        self.clip_speakers: dict[str, list[str]] = {}
        self.clip_files: dict[str, list[str]] = {}

    @property
    def class_names(self) -> list[str]:
        return list(DIGITS)

    @property
    def num_classes(self) -> int:
        return len(DIGITS)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:  # Lightning calls setup once per stage; the data never changes
            return
        parts = {}
        for split, names in self.speakers.items():
            chosen = [f for f in self.files if f[2] in names and self._takes(split, f[3])]
            parts[split] = self._read(chosen)
            self.clip_speakers[split] = [f[2] for f in chosen]
            self.clip_files[split] = [str(f[0]) for f in chosen]
        log.info("data=fsdd: %s", "; ".join(f"{s} {', '.join(n)} ({len(parts[s].tensors[1])} clips)"
                                            for s, n in self.speakers.items()))
        if self.synthetic_per_class:
            parts["train"] = self._with_synthetic(parts["train"])
        self.train_dataset, self.val_dataset, self.test_dataset = parts["train"], parts["val"], parts["test"]

    def _takes(self, split: str, index: int) -> bool:
        """Whether a take of a speaker of `split` belongs to it: all of them, unless val shares the training
        speakers (val_speaker null): then val has the `is_val_take` takes and train the others."""
        if self.val_speaker is not None or split == "test":
            return True
        return is_val_take(index) == (split == "val")

    def _with_synthetic(self, real: TensorDataset) -> TensorDataset:
        """The real training clips plus synthetic_per_class espeak-ng clips of every digit (the keyword
        generator's training voices, data/keywords.py; cached under synthetic_root), at the same peak level."""
        from data.keywords import KeywordSpec, load_keywords

        spec = KeywordSpec(train_per_class=self.synthetic_per_class, val_per_class=0, test_per_class=0,
                           sample_rate=self.sample_rate, clip_seconds=self.clip_seconds, seed=self.seed,
                           words=DIGITS)
        arrays = load_keywords(self.synthetic_root, spec, log=log.info)
        waves = to_int16(self._at_peak(torch.from_numpy(arrays["train_audio"]).float() / 32767))
        labels = torch.from_numpy(arrays["train_labels"]).long()
        self.clip_speakers["train"] += [f"espeak-ng:{v}" for v in arrays["train_voices"]]
        self.clip_files["train"] += [""] * len(labels)
        log.info("data=fsdd: + %d synthesized training clips (espeak-ng, %d per digit)", len(labels),
                 self.synthetic_per_class)
        return TensorDataset(torch.cat([real.tensors[0], waves]), torch.cat([real.tensors[1], labels]))

    def _read(self, files: list[tuple[Path, int, str, int]]) -> TensorDataset:
        waves = torch.zeros(len(files), self.num_samples, dtype=torch.int16)
        for i, (path, _, _, _) in enumerate(files):
            wave = self._at_peak(read_audio(path, self.sample_rate)[None])[0]  # the whole recording's peak
            waves[i] = to_int16(place(wave, self.num_samples))
        labels = torch.tensor([f[1] for f in files], dtype=torch.long)
        return TensorDataset(waves, labels)

    def _at_peak(self, waves: Tensor) -> Tensor:
        """(N, samples) float clips, each scaled to `peak` (null: as they are)."""
        if self.peak is None:
            return waves
        return waves * (self.peak / waves.abs().amax(dim=1, keepdim=True).clamp(min=1e-4))

    def train_dataloader(self) -> DataLoader:
        rng = torch.Generator().manual_seed(self.seed + 1)
        collate = GainBatch(self.max_shift, rng, self.speed_range if self.augment else None,
                            self.gain_db if self.augment else None)
        return self._loader(self.train_dataset, collate, shuffle=True)

__all__ = ["DIGITS", "FSDDDataModule", "place", "scan", "split_speakers"]
