"""Transcribed speech: a folder of `name.wav` + `name.txt` pairs, for fine-tuning Whisper (docs/whisper_finetune.md).

    root/<any sub-folders>/name.wav   the audio (any rate, any number of channels; wav, flac or ogg)
    root/<any sub-folders>/name.txt   its transcript (UTF-8, one or more lines, joined by spaces)

Split: when root holds `train/`, `val/` and `test/` sub-folders, those are the splits (e.g. held-out takes or
speakers); otherwise each pair goes to train / val / test by a hash of its path under root (data/text.py's
`split_of`), so adding files never moves the old ones to another split. Audio is mixed to mono and resampled to
`sample_rate` (16 kHz, Whisper's) when read; the log-mel is the model's own front end (training/speech.py), so
it is never computed twice in two ways. A wav without its text (or a text without its wav) is skipped and said
once; an empty transcript, an unreadable file or a split left with no pair is refused, naming the file or folder.

Batches: {"wave": (B, samples) float32, zero-padded to the batch's longest (Whisper's front end pads with
zeros to 30 s anyway), "text": (B, T) token ids of " " + transcript padded with -100, "index": (B,)}. The
tokens are the source's tokenizer's (the checkpoint carries it, as the translator's), without special tokens:
the LightningModule puts the prompt before them and <|endoftext|> after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.audio import AUDIO_EXTENSIONS, check_audio, read_audio
from data.distributed import loader_options
from data.text import read_text_file, split_of
from models.checks import require_int, require_number
from models.tokenizer import load_tokenizer
from data.normalize import normalize_transcript
from utils.errors import UserError, note

SPLITS = ("train", "val", "test")
IGNORE = -100  # padding of the text ids: what cross-entropy skips


class Utterance:
    """One pair: its audio file, its transcript and a key (its path under root) that decides its split."""

    def __init__(self, *, audio: Path, text: str, key: str) -> None:
        self.audio, self.text, self.key = audio, text, key


def read_pairs(root: Path, notes: list[str] | None = None) -> list[Utterance]:
    """The (audio, transcript) pairs under `root`, sorted by path; files with no partner are skipped and counted in
    `notes`; an empty transcript or a folder with no pair is refused."""
    audio = {p.with_suffix(""): p for p in sorted(root.rglob("*")) if p.suffix.lower() in AUDIO_EXTENSIONS}
    texts = {p.with_suffix(""): p for p in sorted(root.rglob("*.txt"))}
    pairs = []
    for stem in sorted(audio.keys() & texts.keys()):
        text = " ".join(read_text_file(texts[stem], "data=transcripts").split())
        if not normalize_transcript(text):  # nothing the word error rate could count
            raise UserError(f"data=transcripts: {texts[stem]} holds no words (empty or punctuation only); write "
                            f"what {audio[stem].name} says, or remove both files")
        pairs.append(Utterance(audio=audio[stem], text=text, key=str(stem.relative_to(root))))
    for what, lonely, partner in (("audio file", audio.keys() - texts.keys(), ".txt"),
                                  ("transcript", texts.keys() - audio.keys(), "audio file")):
        if lonely and notes is not None:
            first = sorted(lonely)[0]
            shown = audio[first] if what == "audio file" else texts[first]
            notes.append(f"data=transcripts: skipped {len(lonely)} {what}(s) with no {partner} beside them "
                         f"(first: {shown})")
    if not pairs:
        raise UserError(f"data=transcripts: {root} holds no usable pair of name.wav + name.txt "
                        f"({len(audio)} audio file(s), {len(texts)} .txt file(s))")
    return pairs


class Transcribed(Dataset):
    """(waveform (samples,) at `sample_rate`, token ids (T,), index), the audio decoded lazily."""

    def __init__(self, pairs: list[Utterance], ids: list[list[int]], sample_rate: int) -> None:
        self.pairs, self.ids, self.sample_rate = pairs, ids, sample_rate

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, list[int], int]:
        return read_audio(self.pairs[i].audio, self.sample_rate), self.ids[i], i


def collate(items: list[tuple[Tensor, list[int], int]]) -> dict[str, Tensor]:
    waves = torch.nn.utils.rnn.pad_sequence([w for w, _, _ in items], batch_first=True)
    text = torch.full((len(items), max(len(t) for _, t, _ in items)), IGNORE, dtype=torch.long)
    for row, (_, ids, _) in enumerate(items):
        text[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return {"wave": waves, "text": text, "index": torch.tensor([i for _, _, i in items])}


class TranscriptsDataModule(L.LightningDataModule):
    """A folder of (audio, transcript) pairs (module doc). Arguments as configs/data/transcripts.yaml."""

    modality = "audio"
    task = "transcribe"

    def __init__(self, *, root: str, dataset: str = "transcripts", sample_rate: int = 16000, batch_size: int = 8,
                 eval_batch_size: int = 8, num_workers: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, max_seconds: float = 30.0) -> None:
        super().__init__()
        for name, value in (("sample_rate", sample_rate), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size)):
            require_int(name, value)
        require_int("num_workers", num_workers, at_least=0)
        require_number("val_fraction", val_fraction, low=0, high=1)
        require_number("test_fraction", test_fraction, low=0, high=1)
        require_number("max_seconds", max_seconds, low=0, low_open=True)
        self.root, self.dataset, self.sample_rate = Path(str(root)).expanduser(), dataset, sample_rate
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.test_fraction, self.max_seconds = val_fraction, test_fraction, max_seconds
        self.tokenizer: Any = None  # the source's (utils/build.py loads it, or the checkpoint's state)
        self._tokenizer_json: str | None = None
        self._splits: dict[str, list[Utterance]] | None = None
        self._data: dict[str, Transcribed] = {}

    # --- pairs and splits ----------------------------------------------------------------------------
    @property
    def splits(self) -> dict[str, list[Utterance]]:
        if self._splits is None:
            if not self.root.is_dir():
                raise UserError(f"data=transcripts: data.root={self.root} is not a folder; expected name.wav + "
                                f"name.txt pairs (docs/whisper_finetune.md)")
            notes: list[str] = []
            if all((self.root / s).is_dir() for s in SPLITS):
                splits = {s: read_pairs(self.root / s, notes) for s in SPLITS}
            else:
                splits = {s: [] for s in SPLITS}
                for pair in read_pairs(self.root, notes):
                    splits[split_of(pair.key, self.val_fraction, self.test_fraction)].append(pair)
                empty = [s for s in SPLITS if not splits[s]]
                if empty:
                    raise UserError(f"data=transcripts: the {', '.join(empty)} split(s) of {self.root} are empty "
                                    f"({sum(map(len, splits.values()))} pairs, val_fraction={self.val_fraction}, "
                                    f"test_fraction={self.test_fraction}); give more pairs or train/ val/ test/ "
                                    f"sub-folders")
            self._check_audio(splits, notes)
            for line in notes:
                note(line)
            self._splits = splits
        return self._splits

    def _check_audio(self, splits: dict[str, list[Utterance]], notes: list[str]) -> None:
        """Every file readable and not longer than the window the model hears, before any training step; files at
        another rate or with several channels are counted in `notes` (they are resampled / mixed when read)."""
        import soundfile as sf

        resampled, mixed = [], []
        for pairs in splits.values():
            for pair in pairs:
                check_audio(pair.audio)
                info = sf.info(str(pair.audio))
                if info.duration > self.max_seconds:
                    raise UserError(f"data=transcripts: {pair.audio} is {info.duration:.3g} s long, more than "
                                    f"data.max_seconds={self.max_seconds:g} (Whisper hears one 30 s window); "
                                    f"cut it into shorter utterances")
                if info.samplerate != self.sample_rate:
                    resampled.append(f"{pair.audio} at {info.samplerate} Hz")
                if info.channels > 1:
                    mixed.append(f"{pair.audio}: {info.channels} channels")
        total = sum(map(len, splits.values()))
        if resampled:
            notes.append(f"data=transcripts: {len(resampled)} of {total} audio files resampled to "
                         f"{self.sample_rate} Hz when read (first: {resampled[0]})")
        if mixed:
            notes.append(f"data=transcripts: {len(mixed)} of {total} audio files mixed to mono (first: {mixed[0]})")

    def references(self, stage: str) -> list[str]:
        return [p.text for p in self.splits[stage]]

    # --- tokenizer (the source's; saved in every checkpoint) ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self._tokenizer_json}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._tokenizer_json = state["tokenizer"]
        self.tokenizer = load_tokenizer(self._tokenizer_json, zoo_specials=False)

    def save_artifacts(self, run_dir: str | Path) -> None:
        """tokenizer.json in the run directory (the checkpoints carry their own copy)."""
        if self._tokenizer_json is not None:
            (Path(run_dir) / "tokenizer.json").write_text(self._tokenizer_json, encoding="utf-8")

    def token_ids(self, text: str) -> list[int]:
        """A transcript's ids as Whisper's training text has them: after a space, no special tokens."""
        return self.tokenizer.encode(" " + text, add_special_tokens=False).ids

    # --- Lightning hooks -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise UserError("data=transcripts needs the model's tokenizer: fine-tune a source "
                            "(pretrained=<whisper source>, experiment=finetune_whisper)")
        for name, pairs in self.splits.items():
            if name not in self._data:
                self._data[name] = Transcribed(pairs, [self.token_ids(p.text) for p in pairs], self.sample_rate)

    def longest(self) -> tuple[int, str]:
        """(token count, file) of the longest transcript of every split: what must fit the decoder."""
        return max((len(ids), str(data.pairs[i].audio)) for data in self._data.values()
                   for i, ids in enumerate(data.ids))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(self._data[name], batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                          **loader_options(self.num_workers, getattr(self, "trainer", None)))
