"""Use a trained model from the command line, and see its attention.

    python predict.py RUN_DIR "Monday, March 3, 2025"                  # translator: a sentence (or a .txt file)
    python predict.py RUN_DIR digit.png --attention-dir pictures/      # ViT: an image file
    python predict.py RUN_DIR yes.wav   --attention-dir pictures/      # audio: a wav / flac file
    python predict.py RUN_DIR clip.mp4  --attention-dir pictures/      # video: a video file

    python predict.py timm:vit_small_patch16_224 photo.jpg --attention-dir pictures/   # a pretrained source

RUN_DIR is a run directory (its best.ckpt) or a checkpoint file, or a pretrained source (timm:<name>,
hf:<repo id>, a hub folder; converted offline, docs/pretrained.md): the model, its tokenizer or class
names, and its input preparation come from the checkpoint, so nothing is re-typed. The translator
prints the translation; classifiers print the top-5 classes with probabilities. With
--attention-dir, PNG pictures of the attention are written there (computed beside the model's kernel;
the prediction is the same with or without them):

* translator: cross-attention alignment (target x source tokens) and encoder self-attention;
* image: attention rollout from the class token overlaid on the image;
* audio: rollout over the (mel x time) patches beside the log-mel spectrogram;
* video: spatial rollout per frame and the frame-to-frame temporal attention.

With --html out.html, an interactive explorer is written too: one self-contained page per input (several
inputs: out_000_<name>.html, ...), offline, every layer and head (docs/explorer.md).

`python -m viz.samples DIR` writes test examples of the embedded data as files to try this on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from utils.errors import MissingFileError, UserError, note
from utils.rundir import refuse_writing_into_run
from viz.explain import Loaded, explain_classifier, explain_translation, load_trained, read_input, slug
from viz.explorer import explore_input, explore_sentence
from viz.text_attention import pretrained_text_kind, pretrained_text_lines

TEXT_EXTENSIONS = (".txt", ".text", ".tsv", ".csv", ".md")  # an argument ending so names a file of sentences


def read_sentences(items: list[str], notes: list[str] | None = None) -> list[str]:
    """Each item is a sentence, or a text file (.txt, or any existing file named by a path) with one sentence
    a line. A missing .txt file, an empty one or one that is not UTF-8 is refused, not translated as text."""
    from data.text import read_text_file

    sentences = []
    for item in items:
        path = Path(item).expanduser()
        looks_like_file = path.suffix.lower() in TEXT_EXTENSIONS and not any(c.isspace() for c in item)
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError:  # e.g. a sentence longer than a file name may be
            is_dir = is_file = False
        if is_dir:
            raise UserError(f"{item!r} is a folder; give sentences, or a .txt file with one sentence a line")
        if is_file and (looks_like_file or os.sep in item):
            text = read_text_file(path, "predict.py", notes)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if not lines:
                raise UserError(f"{item} holds no sentences (it is empty or blank); expected one sentence a line")
            sentences += lines
        elif looks_like_file:
            raise MissingFileError(f"text file {item!r} does not exist (to translate a sentence that ends in "
                                   f"{path.suffix}, put a space in it or leave the extension out)")
        else:
            sentences.append(item)
    return sentences


def parse_heads(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(h) for h in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--heads {text!r}: expected comma-separated head indices, e.g. 0,2")


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def prepare_out_dir(path: Path, ckpt_path: str, flag: str = "--attention-dir") -> None:
    """The attention folder, checked before the model is loaded: outside the run being read, and writable."""
    from models.pretrained import is_source

    if not is_source(ckpt_path):  # a pretrained source is no run to protect
        refuse_writing_into_run(path, ckpt_path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot write there ({err.strerror or err})") from err


def check_picture_options(loaded: Loaded, heads: list[int] | None, layer: int, encoder_layer: int) -> None:
    """--heads / --layer / --encoder-layer within the model's heads and layers (from its config)."""
    net = loaded.cfg.model.net
    num_heads = int(net.num_heads)
    bad = [h for h in heads or [] if not 0 <= h < num_heads]
    if bad:
        raise UserError(f"--heads {','.join(map(str, heads or []))}: this model has {num_heads} heads per layer "
                        f"(0..{num_heads - 1})")
    layers = {"translator": [("--layer", layer, "decoder_depth"), ("--encoder-layer", encoder_layer, "encoder_depth")],
              "video": [("--layer", layer, "depth")]}.get(loaded.kind, [])
    for flag, value, key in layers:
        n = int(net[key])
        if not -n <= value < n:
            raise UserError(f"{flag} {value}: this model has {n} layers there ({key}={n}); expected {-n}..{n - 1}")


def write_html(path: Path, i: int, name: str, count: int, page: str) -> Path:
    """The explorer page of input i: at `path`, or beside it as <stem>_<i>_<name>.html when there are several."""
    out = path if count == 1 else path.with_name(f"{path.stem}_{i:03d}_{slug(name)}{path.suffix or '.html'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", help="checkpoint file, run directory, or pretrained source (timm:..., hf:...)")
    parser.add_argument("inputs", nargs="+", help="sentences or .txt files (translator); image / audio / video files")
    parser.add_argument("--attention-dir", type=Path, default=None, help="write attention pictures (PNG) here")
    parser.add_argument("--html", type=Path, default=None,
                        help="write the interactive attention explorer here (one HTML file per input)")
    parser.add_argument("--heads", type=parse_heads, default=None, help="only these heads, e.g. 0,2 (default: mean of all)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="translator: decoder layer of the cross-attention picture; video: block of the "
                             "temporal picture (default: last)")
    parser.add_argument("--encoder-layer", type=int, default=-1, help="translator: encoder layer of the self-attention picture")
    parser.add_argument("--beam-size", type=at_least_one, default=None,
                        help="translator: beam width (1 = greedy); default: the model's")
    parser.add_argument("--top-k", type=at_least_one, default=5, help="classifiers: how many classes to print")
    parser.add_argument("--threads", type=at_least_one, default=None, help="torch CPU threads")
    parser.add_argument("--word", default="it", help="pretrained text encoder: the word whose attention is printed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.html is not None and pretrained_text_kind(args.ckpt_path):
            raise UserError(f"--html is not available for a pretrained text source ({args.ckpt_path}) yet; "
                            "use --attention-dir for its pictures")
        if args.attention_dir is not None:
            prepare_out_dir(args.attention_dir, args.ckpt_path)
        if args.html is not None:
            prepare_out_dir(args.html.absolute().parent, args.ckpt_path, "--html")
        if pretrained_text_kind(args.ckpt_path):  # hf: / pkg: / folder of a BERT or Marian model: no checkpoint needed
            for line in pretrained_text_lines(args, read_sentences(args.inputs)):
                print(line)
            return 0
        loaded = load_trained(args.ckpt_path)
        check_picture_options(loaded, args.heads, args.layer, args.encoder_layer)
        if loaded.kind == "translator":
            notes: list[str] = []
            sentences = read_sentences(args.inputs, notes)
            for line in notes:
                note(line)
            for i, sentence in enumerate(sentences):
                notes = []
                text, pictures = explain_translation(loaded, sentence, args.attention_dir, f"{i:03d}_{slug(sentence)}",
                                                     args.beam_size, args.layer, args.encoder_layer, args.heads, notes)
                for line in notes:
                    note(f"sentence {i + 1}: {line}" if len(sentences) > 1 else line)
                print(f"{sentence}\t{text}" if len(sentences) > 1 else text)
                if args.html is not None:
                    pictures.append(write_html(args.html, i, sentence, len(sentences),
                                               explore_sentence(loaded, sentence, args.beam_size)[1]))
                for p in pictures:
                    print(f"  attention picture: {p}")
        else:
            for i, item in enumerate(args.inputs):
                notes = []
                x = read_input(loaded, item, notes)
                if notes:
                    note(f"{item}: {'; '.join(notes)}")
                top, pictures = explain_classifier(loaded, x, args.attention_dir, slug(Path(item).stem), args.top_k,
                                                   args.heads, args.layer)
                print(f"{item}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
                if args.html is not None:
                    pictures.append(write_html(args.html, i, Path(item).stem, len(args.inputs),
                                               explore_input(loaded, x, Path(item).name, args.top_k)[1]))
                for p in pictures:
                    print(f"  attention picture: {p}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
