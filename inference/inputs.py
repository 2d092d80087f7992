"""Input kinds by a network's modality: extensions, a description, how an item becomes its input.

    kind = INPUT_KINDS[predictor.modality]
    for item in gather(predictor, args.inputs, notes):   # a .txt file of sentences: its sentences
        x = read(predictor, item, notes)                # the model input (batch of 1), or the sentence

Files are prepared as the run's data module prepares its own examples, or as a pretrained source's
`preprocess` says; the extensions are the data readers' own (data/images.py, data/audio.py,
data/video.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from data.audio import AUDIO_EXTENSIONS, AudioBatch, duration_text, fit_length, read_audio
from data.images import IMAGE_EXTENSIONS, load_image
from data.text import read_text_file
from data.video import VIDEO_EXTENSIONS, VideoBatch, read_video
from utils.errors import FileFormatError, MissingFileError, UserError


class PredictorLike(Protocol):
    """What reading an input needs of a predictor (inference/predictor.Predictor): its network, and
    the data module of a trained run or the `preprocess` of a pretrained source."""

    net: nn.Module
    datamodule: Any
    preprocess: dict[str, Any] | None
    source: Any

    @property
    def modality(self) -> str: ...


TEXT_EXTENSIONS = (
    ".txt",
    ".text",
    ".tsv",
    ".csv",
    ".md",
)  # an argument ending so names a file of sentences


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe stem from a sentence or a path (names an input's pictures and pages)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "input"


# ----------------------------------------------------------------------------------------- reading


def _stats(predictor: PredictorLike, dims: int) -> tuple[Tensor, Tensor]:
    """(mean, std) per channel, shaped to broadcast over `dims` trailing dimensions."""
    source: Any = predictor.preprocess if predictor.datamodule is None else predictor.datamodule
    shape = (-1,) + (1,) * dims
    mean = torch.tensor(list(source["mean"] if isinstance(source, dict) else source.mean)).view(
        shape
    )
    std = torch.tensor(list(source["std"] if isinstance(source, dict) else source.std)).view(shape)
    return mean, std


MAX_PATCHES = 4096  # an image's patches at most (64 x 64): maps hold heads x patches^2 weights a layer


def parse_image_size(text: str) -> int | tuple[int, int] | str:
    """predict.py --image-size: N (a square), WxH (width x height, as image sizes are written) or
    "native" (the photo's own size) -> N, (height, width) or "native"; a UserError otherwise."""
    if text == "native":
        return text
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]) if len(parts) == 1 else (int(parts[1]), int(parts[0]))
    raise UserError(f"--image-size {text!r}: expected a size in pixels (224), WxH (320x224) or native")


def image_shape(net: nn.Module, wanted: int | tuple[int, int] | str, path: Path,
                notes: list[str] | None) -> tuple[int, int]:
    """(height, width) an image is resized to for --image-size `wanted`: each side rounded to a
    multiple of the network's patch (said in `notes`). More than MAX_PATCHES patches raise a UserError
    naming the sizes; a grid other than the position table's is said (the table is resized). Sizes
    are said as width x height, grids as columns x rows."""
    from PIL import Image

    what = "--image-size"
    if wanted == "native":
        what = "the photo's own size"
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, SyntaxError, ValueError) as err:
            raise FileFormatError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from None
        wanted = (h, w)
    hw = (wanted, wanted) if isinstance(wanted, int) else tuple(wanted)
    embed = net.patch_embed
    ph, pw = embed.patch_size
    shape = (max(ph, round(hw[0] / ph) * ph), max(pw, round(hw[1] / pw) * pw))
    if shape != hw and notes is not None:
        notes.append(f"{what} {hw[1]}x{hw[0]} is no multiple of the patch ({pw}x{ph}): "
                     f"{shape[1]}x{shape[0]} used")
    grid = embed.grid_for(shape)
    if grid[0] * grid[1] > MAX_PATCHES:
        side = int(MAX_PATCHES**0.5)
        raise UserError(
            f"--image-size {shape[1]}x{shape[0]} makes {grid[1]}x{grid[0]} = {grid[0] * grid[1]} "
            f"patches; predict.py takes at most {MAX_PATCHES} (e.g. {side * pw}x{side * ph} at patch "
            f"{pw}x{ph}); the position table holds {embed.grid_size[1]}x{embed.grid_size[0]}"
        )
    table = getattr(getattr(net, "pos_embed", None), "grid_size", None)
    if table is not None and tuple(table) != tuple(grid) and notes is not None:
        notes.append(f"position table of {table[1]}x{table[0]} patches resized to {grid[1]}x{grid[0]}")
    return shape


def _read_image(predictor: PredictorLike, path: Path, notes: list[str] | None) -> Tensor:
    dm, pre = predictor.datamodule, predictor.preprocess
    wanted = getattr(predictor, "image_size", None)
    if wanted is not None:  # predict.py --image-size: resized to it, not cropped
        in_chans = dm.in_chans if dm is not None else int(pre["in_chans"])
        image = load_image(path, image_shape(predictor.net, wanted, path, notes), in_chans, notes)
        if dm is not None:
            return dm.normalize(image)[None]
        mean, std = _stats(predictor, 2)
        return ((image.float() / 255 - mean) / std)[None]
    if dm is not None:
        return dm.normalize(load_image(path, dm.image_size, dm.in_chans, notes))[None]
    image = load_image(
        path,
        int(pre["image_size"]),
        int(pre["in_chans"]),
        notes,
        float(pre["crop_pct"]),
        pre["interpolation"],
    )
    mean, std = _stats(predictor, 2)
    return ((image.float() / 255 - mean) / std)[None]


def _read_audio(predictor: PredictorLike, path: Path, notes: list[str] | None) -> Tensor:
    dm, pre = predictor.datamodule, predictor.preprocess
    # the whole clip (a transcriber's too, which runs in windows): the model's front end pads or cuts its frames
    if dm is None or predictor.net.task == "transcribe":
        return read_audio(path, int(pre["sample_rate"]) if dm is None else dm.sample_rate, notes)[None]
    wave = read_audio(path, dm.sample_rate, notes)
    if notes is not None and len(wave) != dm.num_samples:
        clip = f"the model's {dm.num_samples / dm.sample_rate:g} s clip"
        notes.append(
            f"{duration_text(len(wave) / dm.sample_rate)} s long: "
            + (
                f"kept the middle of it for {clip}"
                if len(wave) > dm.num_samples
                else f"padded with silence to {clip}"
            )
        )
    return AudioBatch()([(fit_length(wave, dm.num_samples), 0)])[0]


def _read_video(predictor: PredictorLike, path: Path, notes: list[str] | None) -> Tensor:
    dm, pre = predictor.datamodule, predictor.preprocess
    if dm is not None:
        clip = read_video(path, dm.num_frames, dm.image_size, dm.in_chans, notes)
        return VideoBatch(dm.mean, dm.std)([(clip, 0)])[0]
    # frames squashed to the model's square (the reference crops the centre)
    clip = read_video(
        path, int(pre["num_frames"]), int(pre["image_size"]), int(pre["in_chans"]), notes
    )
    mean, std = _stats(predictor, 3)
    return ((clip.float() / 255 - mean) / std)[None]


# --------------------------------------------------------------------------------------- showing


def _show_image(predictor: PredictorLike, x: Tensor) -> Tensor:
    if predictor.datamodule is not None:
        return predictor.datamodule.denormalize(x)
    mean, std = _stats(predictor, 2)
    return (x * std + mean).clamp(0, 1)


def _show_audio(predictor: PredictorLike, x: Tensor) -> Tensor:
    shown = getattr(predictor.net, "shown_spectrogram", None)  # a network whose front end output is not (B, 1, F, T)
    if shown is not None:
        return shown(x)
    return predictor.net.frontend(x[None])[0, 0]  # the model's own (mels, frames) spectrogram


def _show_video(predictor: PredictorLike, x: Tensor) -> Tensor:
    mean, std = _stats(predictor, 3)
    return (x * std + mean).clamp(0, 1).permute(1, 0, 2, 3)  # (T, C, H, W)


def _show_text(predictor: PredictorLike, x: Tensor) -> None:
    return None  # the tokens are what a page shows of a sentence


# ------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class InputKind:
    """What a modality takes. read: a file -> the model input (batch of 1), None for text (a
    sentence is the input); show: the input (no batch) -> what people see of it (images / frames in
    [0, 1], the audio model's spectrogram)."""

    extensions: tuple[str, ...]
    description: str
    one: str
    read: Callable[[PredictorLike, Path, list[str] | None], Tensor] | None
    show: Callable[[PredictorLike, Tensor], Tensor | None]


# Protein files (inference/protein.py reads them): FASTA records, or a PDB structure's first chain.
FASTA_EXTENSIONS = (".fasta", ".fa", ".faa", ".fas", ".fna")
PDB_EXTENSIONS = (".pdb", ".ent")

INPUT_KINDS = {
    "image": InputKind(
        IMAGE_EXTENSIONS, "images (.png, .jpg, ...)", "an image", _read_image, _show_image
    ),
    "audio": InputKind(
        AUDIO_EXTENSIONS,
        "audio files (.wav, .flac, .ogg)",
        "a wav / flac / ogg clip",
        _read_audio,
        _show_audio,
    ),
    "video": InputKind(
        VIDEO_EXTENSIONS,
        "videos (.mp4, .avi, .webm, .mkv, .mov, animated .gif)",
        "a video",
        _read_video,
        _show_video,
    ),
    "protein": InputKind(  # read by inference/protein.py (a FASTA file stands for its records)
        FASTA_EXTENSIONS + PDB_EXTENSIONS,
        "protein sequences (one-letter codes), FASTA files or PDB files",
        "a protein sequence",
        None,
        _show_text,
    ),
    "text": InputKind(
        TEXT_EXTENSIONS,
        "sentences, or text files (.txt) of one sentence a line",
        "a sentence",
        None,
        _show_text,
    ),
}


def input_kind(modality: str, what: str = "this model") -> InputKind:
    """The kind of `modality`; a UserError for a modality no reader exists for (e.g. ListOps token
    ids)."""
    if modality not in INPUT_KINDS:
        raise UserError(
            f"{what} reads {modality!r} input, for which there is no input reader or attention "
            f"picture (they exist for {', '.join(INPUT_KINDS)} models); evaluate.py takes any run"
        )
    return INPUT_KINDS[modality]


def file_modality(path: Path) -> str | None:
    """The first modality whose files have this extension ("image" | "audio" | "video"), or None
    (.gif is an image's and a video's: `read` takes it as the model's own kind)."""
    suffix = path.suffix.lower()
    return next(
        (m for m, kind in INPUT_KINDS.items() if kind.read and suffix in kind.extensions), None
    )


# ----------------------------------------------------------------------------------------- items


def gather(predictor: PredictorLike, items: list[str], notes: list[str] | None = None) -> list[str]:
    """The inputs named on a command line: files as given, or, for a text model, sentences (a text
    file stands for its lines)."""
    return read_sentences(items, notes) if predictor.modality == "text" else list(items)


def read_sentences(items: list[str], notes: list[str] | None = None) -> list[str]:
    """Each item is a sentence, or a text file (.txt, or any existing file named by a path) with one
    sentence a line. A missing .txt file, an empty one or one that is not UTF-8 is refused, not
    translated as text."""
    sentences = []
    for item in items:
        if not item.strip():  # an empty sentence, not the current folder: the model's reader refuses it
            sentences.append(item)
            continue
        path = Path(item).expanduser()
        looks_like_file = path.suffix.lower() in TEXT_EXTENSIONS and not any(
            c.isspace() for c in item
        )
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError:  # e.g. a sentence longer than a file name may be
            is_dir = is_file = False
        if is_dir:
            raise UserError(
                f"{item!r} is a folder; give sentences, or a .txt file with one sentence a line"
            )
        if is_file and (looks_like_file or os.sep in item):
            sentences += _lines(path, item, notes)
        elif looks_like_file:
            raise MissingFileError(
                f"text file {item!r} does not exist (to give a sentence or prompt that ends in "
                f"{path.suffix}, put a space in it or leave the extension out)"
            )
        else:
            sentences.append(item)
    return sentences


def _lines(path: Path, item: str, notes: list[str] | None) -> list[str]:
    text = read_text_file(path, "predict.py", notes)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(
            f"{item} holds no sentences (it is empty or blank); expected one sentence a line"
        )
    return lines


def read(predictor: PredictorLike, item: str, notes: list[str] | None = None) -> Tensor | str:
    """One model input (batch of 1) from a file, prepared as the data module prepares its own, or
    the sentence itself for a text model. A file of another kind than the model takes, or one that
    cannot be decoded, raises a UserError naming it; what was adapted (resampled, resized, ...) goes
    to `notes`."""
    name = type(predictor.net).__name__
    kind = input_kind(predictor.modality, f"this {name}")
    if kind.read is None:
        return item
    path = Path(item).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "is not a file" if path.exists() else "does not exist"
        raise MissingFileError(
            f"input {item!r} {what}; this {name} takes a file path ({kind.description})"
        )
    # an extension two kinds share (.gif: an image, or an animated clip) is the model's own kind's
    found = predictor.modality if path.suffix.lower() in kind.extensions else file_modality(path)
    if found is not None and found != predictor.modality:
        article = "an" if found[0] in "aeiou" else "a"
        raise FileFormatError(
            f"{item} is {article} {found} file, but this {name} ({predictor.source}) takes "
            f"{kind.description}"
        )
    try:
        return kind.read(predictor, path, notes)
    except FileFormatError as err:
        if found is None:  # an unknown extension: say what the model takes
            raise FileFormatError(f"{err}; this {name} takes {kind.description}") from None
        raise
