"""Predictions with their attention pictures, for any checkpoint of the zoo (used by predict.py and
evaluate.py). Each `explain_*` returns printable results and writes PNGs when given a folder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import Tensor

from utils.build import build_datamodule, build_module, datamodule_state
from utils.checkpoint import CONFIG_KEY
from utils.restore import read_run
from utils.errors import FileFormatError, MissingFileError, UserError
from utils.validate import load_weights
from viz import plots
from viz.maps import classifier_maps, translation_maps


@dataclass
class Loaded:
    """A trained module in eval mode, its kind ("translator" | "image" | "audio" | "video"), the data
    module that knows its classes and input normalisation, and the run config."""

    module: L.LightningModule
    kind: str
    datamodule: L.LightningDataModule
    cfg: DictConfig
    ckpt_file: Path
    class_names: list[str] = field(default_factory=list)


def model_kind(net: torch.nn.Module) -> str:
    from models.audio import AudioSpectrogramTransformer
    from models.translator import Translator
    from models.video import VideoTransformer
    from models.vit import VisionTransformer

    for cls, kind in ((Translator, "translator"), (AudioSpectrogramTransformer, "audio"),
                      (VideoTransformer, "video"), (VisionTransformer, "image")):
        if isinstance(net, cls):
            return kind
    raise UserError(f"no input reader or attention pictures for a {type(net).__name__} (they exist for ViT, audio, "
                    f"video and translator runs); evaluate.py takes any run")


def load_trained(ckpt_path: str | Path) -> Loaded:
    """Rebuild model and data module from a checkpoint file or run directory (safe `weights_only` load),
    or convert a pretrained source (timm:..., hf:..., a hub folder: models/pretrained) with its preprocessing."""
    from models.pretrained import is_source

    if is_source(str(ckpt_path)):
        return load_source(str(ckpt_path))
    ckpt_file, ckpt, cfg = read_run(ckpt_path)
    if not HydraConfig.initialized():  # called from plain Python: give ${hydra:...} paths Hydra's meaning
        with open_dict(cfg):
            cfg.paths.root_dir = str(Path.cwd())
            cfg.paths.output_dir = str(ckpt_file.resolve().parent.parent)
    dm = build_datamodule(cfg, datamodule_state(ckpt, cfg))  # fills num_classes / vocab_size for the model
    with open_dict(cfg):  # training-time switches: no compile time or recomputation for a few predictions
        for switch in ("compile", "grad_checkpointing"):
            if switch in cfg.model:
                cfg.model[switch] = False
    module = build_module(cfg)
    load_weights(module, ckpt["state_dict"], ckpt_file, cfg, ckpt.get(CONFIG_KEY))
    if model_kind(module.net) == "translator":
        module.tokenizer = getattr(dm, "tokenizer", None)
    if model_kind(module.net) == "video" and getattr(dm, "dataset", None) == "moving_digits":
        dm.setup("predict")  # its normalisation comes from the generated training clips (~0.3 s)
    return wrap(module, dm, cfg, ckpt_file)


def load_source(spec: str) -> Loaded:
    """A pretrained source, converted, as a Loaded without a data module: inputs are prepared as its
    `preprocess` says (utils/pretrained.py), classes named by its config."""
    from omegaconf import OmegaConf

    from training.classification import ClassificationModule
    from utils.pretrained import load_source as convert_source

    net, config, pre = convert_source(spec)
    cfg = OmegaConf.create({"model": {"pretrained": spec, "modality": pre["modality"], "net": config,
                                      "preprocess": pre}})
    module = ClassificationModule(net, max(2, int(config["num_classes"])), optimizer=None)  # type: ignore[arg-type]
    names = list(pre.get("class_names") or [f"class {i}" for i in range(int(config["num_classes"]))])
    return Loaded(module.eval(), model_kind(net), None, cfg, Path(spec), names)  # type: ignore[arg-type]


def wrap(module: L.LightningModule, dm: L.LightningDataModule, cfg: DictConfig, ckpt_file: Path) -> Loaded:
    """Bundle a module with its data module (evaluate.py builds both itself)."""
    kind = model_kind(module.net)
    if kind == "translator" and getattr(module, "tokenizer", None) is None:
        raise UserError(f"{ckpt_file} carries no tokenizer (expected the data module state in the checkpoint)")
    names: list[str] = []
    if kind != "translator":
        try:
            names = list(dm.class_names)
        except (OSError, ValueError):  # a user folder that has moved since training: numbers will do
            names = [f"class {i}" for i in range(int(cfg.data.num_classes))]
    return Loaded(module.eval(), kind, dm, cfg, ckpt_file, names)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe stem from a sentence or a path."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "input"


# ------------------------------------------------------------------------------------------ inputs


KIND_FILES = {"image": "images (.png, .jpg, ...)", "audio": "audio files (.wav, .flac, .ogg)",
              "video": "videos (.mp4, .avi, .webm, .mkv, .mov)"}


def file_kind(path: Path) -> str | None:
    """"image" | "audio" | "video" by the file's extension, or None."""
    from data.audio import AUDIO_EXTENSIONS
    from data.images import IMAGE_EXTENSIONS
    from data.video import VIDEO_EXTENSIONS

    suffix = path.suffix.lower()
    for kind, extensions in (("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS), ("video", VIDEO_EXTENSIONS)):
        if suffix in extensions:
            return kind
    return None


def read_input(loaded: Loaded, item: str, notes: list[str] | None = None) -> Tensor:
    """One model input (batch of 1) from a file, prepared as the data module prepares its own. A file of
    another kind than the model takes, or one that cannot be decoded, raises a UserError naming it; what
    was adapted to fit the model (resampled, resized, ...) is appended to `notes`."""
    path = Path(item).expanduser()
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a file"
        raise MissingFileError(f"input {item!r} is {what}; this {type(loaded.module.net).__name__} takes a file "
                               f"path ({KIND_FILES[loaded.kind]})")
    kind = file_kind(path)
    if kind == "image" and loaded.kind == "video" and path.suffix.lower() == ".gif":
        kind = "video"  # an animated GIF is a clip too
    if kind is not None and kind != loaded.kind:
        article = "an" if kind in ("image", "audio") else "a"
        raise FileFormatError(f"{item} is {article} {kind} file, but this {type(loaded.module.net).__name__} "
                              f"({loaded.ckpt_file}) takes {KIND_FILES[loaded.kind]}")
    try:
        return _read(loaded, path, notes)
    except FileFormatError as err:
        if kind is None:  # an unknown extension: say what the model takes
            raise FileFormatError(f"{err}; this {type(loaded.module.net).__name__} takes "
                                  f"{KIND_FILES[loaded.kind]}") from None
        raise


def _read(loaded: Loaded, path: Path, notes: list[str] | None) -> Tensor:
    dm = loaded.datamodule
    if dm is None:  # a pretrained source: its own preprocessing
        return _read_pretrained(loaded, path, notes)
    if loaded.kind == "image":
        from data.images import load_image

        return dm.normalize(load_image(path, dm.image_size, dm.in_chans, notes))[None]
    if loaded.kind == "audio":
        from data.audio import AudioBatch, fit_length, read_audio

        wave = read_audio(path, dm.sample_rate, notes)
        if notes is not None and len(wave) != dm.num_samples:
            clip = f"the model's {dm.num_samples / dm.sample_rate:g} s clip"
            notes.append(f"{len(wave) / dm.sample_rate:.3g} s long: " + (f"kept the middle of it for {clip}"
                         if len(wave) > dm.num_samples else f"padded with silence to {clip}"))
        return AudioBatch()([(fit_length(wave, dm.num_samples), 0)])[0]
    from data.video import VideoBatch, read_video

    clip = read_video(path, dm.num_frames, dm.image_size, dm.in_chans, notes)
    return VideoBatch(dm.mean, dm.std)([(clip, 0)])[0]


def _read_pretrained(loaded: Loaded, path: Path, notes: list[str] | None) -> Tensor:
    pre = loaded.cfg.model.preprocess
    if loaded.kind == "image":
        from data.images import load_image

        image = load_image(path, int(pre.image_size), int(pre.in_chans), notes, float(pre.crop_pct), pre.interpolation)
        mean, std = torch.tensor(list(pre.mean)).view(-1, 1, 1), torch.tensor(list(pre.std)).view(-1, 1, 1)
        return ((image.float() / 255 - mean) / std)[None]
    if loaded.kind == "audio":  # the whole clip: the model's front end pads or cuts its frames
        from data.audio import read_audio

        return read_audio(path, int(pre.sample_rate), notes)[None]
    from data.video import read_video  # frames squashed to the model's square (the reference crops the centre)

    clip = read_video(path, int(pre.num_frames), int(pre.image_size), int(pre.in_chans), notes)
    mean, std = torch.tensor(list(pre.mean)).view(-1, 1, 1, 1), torch.tensor(list(pre.std)).view(-1, 1, 1, 1)
    return ((clip.float() / 255 - mean) / std)[None]


def display_input(loaded: Loaded, x: Tensor) -> Tensor:
    """What the model saw, for people: images / frames in [0, 1], the audio model's own spectrogram."""
    dm = loaded.datamodule
    if dm is None and loaded.kind == "image":
        pre = loaded.cfg.model.preprocess
        mean, std = torch.tensor(list(pre.mean)).view(-1, 1, 1), torch.tensor(list(pre.std)).view(-1, 1, 1)
        return (x * std + mean).clamp(0, 1)
    if loaded.kind == "image":
        return dm.denormalize(x)
    if loaded.kind == "audio":
        return loaded.module.net.frontend(x[None])[0, 0]
    stats = loaded.cfg.model.preprocess if dm is None else dm  # a pretrained source: its own normalisation
    mean = torch.tensor(list(stats.mean)).view(-1, 1, 1, 1)
    std = torch.tensor(list(stats.std)).view(-1, 1, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 0, 2, 3)  # (T, C, H, W)


# ------------------------------------------------------------------------------------- classifiers


def top_classes(logits: Tensor, names: list[str], k: int = 5) -> list[tuple[str, float]]:
    probs = logits.float().softmax(-1)
    p, i = probs.topk(min(k, probs.numel()))
    return [(names[j] if j < len(names) else f"class {j}", float(q)) for q, j in zip(p.tolist(), i.tolist())]


def explain_classifier(loaded: Loaded, x: Tensor, out_dir: Path | None, stem: str, top_k: int = 5,
                       heads: list[int] | None = None, time_layer: int = -1,
                       label: str | None = None) -> tuple[list[tuple[str, float]], list[Path]]:
    """Top-k classes of one input x (batch of 1) and, with out_dir, its attention picture."""
    maps = classifier_maps(loaded.module.net, x, heads=heads, time_layer=time_layer)
    top = top_classes(maps.logits[0], loaded.class_names, top_k)
    if out_dir is None:
        return top, []
    title = f"prediction: {top[0][0]} ({top[0][1]:.0%})" + (f", label: {label}" if label is not None else "")
    shown = display_input(loaded, x[0])
    path = Path(out_dir) / f"{stem}_attention.png"
    if loaded.kind == "image":
        out = plots.plot_image_attention(shown, maps.tokens[0], title, path)
    elif loaded.kind == "audio":
        net = loaded.module.net
        hop = net.frontend.hop_length / net.sample_rate
        out = plots.plot_audio_attention(shown, maps.tokens[0], title, path, hop)
    else:
        out = plots.plot_video_attention(shown, maps.tokens[0], maps.time[0], title, path, maps.time_layer)
    return top, [out]


# ------------------------------------------------------------------------------------- translation


def translate(loaded: Loaded, sentence: str, beam_size: int | None = None,
              notes: list[str] | None = None) -> tuple[Tensor, list[int], str]:
    """One sentence -> (source ids (1, S), generated ids up to EOS included, translation text); what was done
    to odd input (truncated, unknown characters) is appended to `notes`."""
    from models.tokenizer import decode

    module = loaded.module
    ids = source_ids(module.tokenizer, sentence, module.net.max_len, notes)
    src = torch.tensor([ids])
    with torch.no_grad():
        out = module.decode_ids(src, beam_size)[0].tolist()
    text = decode(module.tokenizer, out)
    eos, pad = module.net.eos_id, module.net.pad_id
    out = out[: out.index(eos) + 1] if eos in out else [t for t in out if t != pad]
    return src, out, text


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def source_ids(tokenizer: Any, sentence: str, max_len: int, notes: list[str] | None = None) -> list[int]:
    """Token ids of a sentence to translate, as the model reads it (at most max_len). Refuses an empty sentence
    and one none of whose characters the tokenizer knows (the model would translate [UNK]s with confidence);
    notes the unknown characters of a partly known one, and a truncation."""
    from models.tokenizer import UNK_ID

    if not sentence.strip():
        raise UserError("the sentence is empty; give text to translate")
    enc = tokenizer.encode(sentence, add_special_tokens=False)  # offsets point into `sentence`
    ids, offsets = list(enc.ids), list(enc.offsets)
    if not ids:
        raise UserError(f"{shorten(sentence)!r} gives no tokens to translate")
    unk = getattr(tokenizer, "unk_id", UNK_ID)  # a pretrained family's own (Marian: 1 too)
    unknown = "".join(sentence[a:b] for i, (a, b) in zip(ids, offsets) if i == unk)
    unknown = "".join(c for c in unknown if not c.isspace())
    if unknown and len(unknown) == sum(not c.isspace() for c in sentence):
        raise UserError(f"none of the characters of {shorten(sentence)!r} is known to the model's tokenizer (it "
                        f"knows the characters of its training text); nothing to translate")
    if unknown and notes is not None:
        shown = "".join(dict.fromkeys(unknown))[:10]
        notes.append(f"{len(unknown)} character(s) unknown to the tokenizer ({shown!r}) read as [UNK]")
    if len(ids) > max_len:
        end = offsets[max_len - 1][1]
        tail = sentence[max(0, end - 30):end]
        tail = "..." + (tail.split(" ", 1)[-1] if " " in tail else tail) if end > 30 else tail
        if notes is not None:
            notes.append(f"{len(ids)} tokens, more than the model's max_len={max_len}: truncated to the first "
                         f"{max_len} tokens ({end} of {len(sentence)} characters, up to {tail!r})")
        ids = ids[:max_len]
    return ids


def explain_translation(loaded: Loaded, sentence: str, out_dir: Path | None, stem: str, beam_size: int | None = None,
                        cross_layer: int = -1, encoder_layer: int = -1, heads: list[int] | None = None,
                        notes: list[str] | None = None) -> tuple[str, list[Path]]:
    """Translate one sentence and, with out_dir, draw its cross-attention alignment and encoder self-attention.
    What was done to odd input (truncated, unknown characters) is appended to `notes`."""
    src, out, text = translate(loaded, sentence, beam_size, notes)
    if out_dir is None:
        return text, []
    module = loaded.module
    maps = translation_maps(module.net, src, out, module.tokenizer, cross_layer, encoder_layer, heads)
    heads_txt = "heads " + ",".join(map(str, heads)) if heads else "mean over heads"
    paths = [
        plots.plot_matrix(maps.cross, maps.target_tokens, maps.source_tokens,
                          f"cross-attention {maps.cross_layer} ({heads_txt})\n{sentence} -> {text}",
                          Path(out_dir) / f"{stem}_cross_attention.png",
                          "source token (looked at)", "target token (being produced)"),
        plots.plot_matrix(maps.encoder, maps.source_tokens, maps.source_tokens,
                          f"encoder self-attention {maps.encoder_layer} ({heads_txt})\n{sentence}",
                          Path(out_dir) / f"{stem}_encoder_attention.png",
                          "token looked at (key)", "token looking (query)"),
    ]
    return text, paths


def test_examples(loaded: Loaded, n: int) -> list[tuple[Any, Any]]:
    """The first n test examples as (input, label): sentences + references for the translator,
    (1, ...) model inputs + class names for classifiers."""
    dm = loaded.datamodule
    dm.setup("test")
    if loaded.kind == "translator":
        return list(zip(dm.sources("test"), dm.references("test")))[:n]
    batch = next(iter(dm.test_dataloader()))
    xs, ys = batch
    return [(xs[i:i + 1], loaded.class_names[int(ys[i])]) for i in range(min(n, len(ys)))]


def save_test_pictures(loaded: Loaded, n: int, out_dir: Path) -> list[str]:
    """Attention pictures (PNG) and the interactive explorer (test<i>.html, viz/explorer) of the first n test
    examples in out_dir; returns one printable line each."""
    from viz.explorer import explore_input, explore_sentence

    lines = []
    for i, (x, label) in enumerate(test_examples(loaded, n)):
        if loaded.kind == "translator":
            text, paths = explain_translation(loaded, x, out_dir, f"test{i:03d}_{slug(x)}")
            lines.append(f"{x} -> {text} (reference: {label})")
            page = explore_sentence(loaded, x)[1]
        else:
            top, paths = explain_classifier(loaded, x, out_dir, f"test{i:03d}", label=label)
            lines.append(f"test example {i} (label {label}): " + ", ".join(f"{c} {p:.1%}" for c, p in top[:3]))
            page = explore_input(loaded, x, f"test example {i} (label {label})")[1]
        paths.append(Path(out_dir) / f"test{i:03d}.html")
        paths[-1].write_text(page, encoding="utf-8")
        lines += [f"  {p}" for p in paths]
    return lines
