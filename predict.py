"""Use a trained model from the command line, and see its attention.

    python predict.py RUN_DIR "Monday, March 3, 2025"                  # translator: a sentence (or a .txt file)
    python predict.py RUN_DIR digit.png --attention-dir pictures/      # ViT: an image file
    python predict.py RUN_DIR yes.wav   --attention-dir pictures/      # audio: a wav / flac file
    python predict.py RUN_DIR clip.mp4  --attention-dir pictures/      # video: a video file

RUN_DIR is a run directory (its best.ckpt) or a checkpoint file: the model, its tokenizer or class
names, and its input preparation come from the checkpoint, so nothing is re-typed. The translator
prints the translation; classifiers print the top-5 classes with probabilities. With
--attention-dir, PNG pictures of the attention are written there (computed beside the model's kernel;
the prediction is the same with or without them):

* translator: cross-attention alignment (target x source tokens) and encoder self-attention;
* image: attention rollout from the class token overlaid on the image;
* audio: rollout over the (mel x time) patches beside the log-mel spectrogram;
* video: spatial rollout per frame and the frame-to-frame temporal attention.

`python -m viz.samples DIR` writes test examples of the embedded data as files to try this on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from viz.explain import explain_classifier, explain_translation, load_trained, read_input, slug


def read_sentences(items: list[str]) -> list[str]:
    """Each item is a sentence, or a .txt file with one sentence a line."""
    sentences = []
    for item in items:
        path = Path(item)
        if path.suffix == ".txt" and path.is_file():
            sentences += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt_path", help="checkpoint file or run directory")
    parser.add_argument("inputs", nargs="+", help="sentences or .txt files (translator); image / audio / video files")
    parser.add_argument("--attention-dir", type=Path, default=None, help="write attention pictures (PNG) here")
    parser.add_argument("--heads", type=parse_heads, default=None, help="only these heads, e.g. 0,2 (default: mean of all)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="translator: decoder layer of the cross-attention picture; video: block of the "
                             "temporal picture (default: last)")
    parser.add_argument("--encoder-layer", type=int, default=-1, help="translator: encoder layer of the self-attention picture")
    parser.add_argument("--beam-size", type=int, default=None, help="translator: beam width (1 = greedy); default: the model's")
    parser.add_argument("--top-k", type=int, default=5, help="classifiers: how many classes to print")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        loaded = load_trained(args.ckpt_path)
        if loaded.kind == "translator":
            sentences = read_sentences(args.inputs)
            for i, sentence in enumerate(sentences):
                text, pictures = explain_translation(loaded, sentence, args.attention_dir, f"{i:03d}_{slug(sentence)}",
                                                     args.beam_size, args.layer, args.encoder_layer, args.heads)
                print(f"{sentence}\t{text}" if len(sentences) > 1 else text)
                for p in pictures:
                    print(f"  attention picture: {p}")
        else:
            for item in args.inputs:
                x = read_input(loaded, item)
                top, pictures = explain_classifier(loaded, x, args.attention_dir, slug(Path(item).stem), args.top_k,
                                                   args.heads, args.layer)
                print(f"{item}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))
                for p in pictures:
                    print(f"  attention picture: {p}")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
