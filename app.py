"""A local demo of the zoo's models and their attention: `python app.py RUN_DIR [RUN_DIR ...]`.

    python app.py outputs/train/runs/<vit run> outputs/train/runs/<translator run>   # http://127.0.0.1:7860

One tab per run (checkpoint file or run directory, as predict.py takes): upload an image, a wav or a
video, or type a sentence (a language model: a prompt, continued as predict.py continues it; a protein
model: a sequence of one-letter residue codes, optionally after a FASTA header line), and get
the prediction (the same as predict.py's), the interactive explorer (viz/explorer, in an iframe: the
page runs its own scripts, offline) and the static pictures (predict.py --attention-dir). Bad input
(wrong file type, empty sentence, a file too large, a corrupt file) is answered with a message and the
app keeps serving. Listens on 127.0.0.1 unless --host says otherwise; Gradio's analytics are off."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from inference.inputs import INPUT_KINDS, read, slug  # noqa: E402
from inference.load import load, prepare_contact_head  # noqa: E402
from inference.predictor import Prediction, Predictor  # noqa: E402
from inference.protein import ProteinInput, clean_sequence, protein_lines  # noqa: E402
from utils.errors import OneLineParser, UserError  # noqa: E402
from viz.explorer import iframe, page  # noqa: E402
from viz.pictures import draw  # noqa: E402


class Demo:
    """The handler of one run's tab: returns (message, prediction, explorer iframe, picture paths)."""

    def __init__(self, predictor: Predictor, workdir: Path, max_mb: float, max_residues: int = 1024) -> None:
        self.predictor = predictor
        self.workdir = workdir
        self.max_bytes = int(max_mb * 1e6)
        self.max_residues = max_residues

    def answer(self, given: str | None) -> tuple[str, str, str, list[str]]:
        """One request: the input read, the model run once, the page and the pictures drawn from
        that run. The message: an error, or what was done to odd input (predict.py's `note:` lines)."""
        notes: list[str] = []
        try:
            x, name = self._read(given, notes)
            p = self.predictor.predict(x, maps=True, words=True, notes=notes)  # words: a speech page shows them
            title = f"{name} -> {p.text}" if p.text is not None else name
            folder = Path(tempfile.mkdtemp(prefix="pictures-", dir=self.workdir))
            # A text encoder's pictures follow one word (predict.py --word): its page shows every token.
            pictures = [] if p.embedding is not None else draw(p, folder, slug(Path(name).stem if p.top else name))
            message = "\n\n".join(f"note: {line}" for line in notes)  # Markdown: one paragraph a note
            return message, shown(p), iframe(page(p, title)), [str(path) for path in pictures]
        except Exception as err:  # any bad input becomes a message; the app keeps serving
            return f"error: {err}", "", "", []

    def _read(self, given: str | None, notes: list[str]) -> tuple[torch.Tensor | str, str]:
        """(model input, its name) of a sentence or an uploaded file, checked before it is decoded."""
        modality = self.predictor.modality
        kind = INPUT_KINDS[modality]
        if self.predictor.task == "unmask":
            return typed_protein(self.predictor, given, self.max_residues, notes)
        if kind.read is None:
            if not given or not given.strip():
                what = "prompt" if self.predictor.task == "complete" else "sentence"
                raise ValueError(f"the {what} is empty; type a {what}")
            return given, given
        if not given:
            raise ValueError(f"no file: upload {kind.one}")
        file = Path(given)
        if file.suffix.lower() not in kind.extensions:
            raise ValueError(
                f"{file.name}: a {modality} model takes {', '.join(sorted(kind.extensions))} files"
            )
        if file.stat().st_size > self.max_bytes:
            raise ValueError(
                f"{file.name} is {file.stat().st_size / 1e6:.1f} MB; the limit is "
                f"{self.max_bytes / 1e6:.0f} MB (--max-file-mb)"
            )
        try:
            return read(self.predictor, str(file), notes), file.name
        except Exception as err:
            raise ValueError(f"could not read {file.name} as {modality}: {err}") from err


def typed_protein(predictor: Predictor, given: str | None, max_residues: int,
                  notes: list[str] | None = None) -> tuple[ProteinInput, str]:
    """(protein, its name) of a typed sequence: residue letters, optionally after a FASTA header line (its first
    word names it). Never read as a file name: the app does not open files on the machine it runs on. At most
    max_residues: the pseudo-perplexity runs the model once per residue and the maps grow with its square."""
    text = (given or "").strip()
    name = "sequence"
    if text.startswith(">"):
        header, _, text = text.partition("\n")
        name = (header[1:].split() or ["sequence"])[0]
    if not text.strip():
        raise ValueError("the sequence is empty; type the residues in one-letter codes (MKTAYIAKQR...)")
    seq = clean_sequence(predictor.net.alphabet, text, name, notes)
    if len(seq) > max_residues:
        raise ValueError(f"{name}: {len(seq)} residues; the app answers proteins of at most {max_residues} "
                         f"(--max-residues; predict.py takes any length)")
    return ProteinInput(name, seq), name


def shown(p: Prediction) -> str:
    """The prediction as predict.py prints it: the prompt and its continuation, the translation, or
    'name 97.1%, name 1.2%, ...'."""
    if p.net.task == "complete":
        return f"{p.input}{p.text}"
    if p.net.task == "unmask":  # predict.py's lines: pseudo-perplexity, then the top L / 5 contacts
        lines = protein_lines(p)
        if p.contact_probs is None:  # predict.py says so in a note, once for the run
            lines.append("no contacts: the contact head is not fitted "
                         "(evaluate.py ckpt_path=<run> contacts=true fits it)")
        return "\n".join(lines)
    if p.text is not None:
        return p.text
    if p.embedding is not None:
        return f"sentence embedding of {p.embedding.numel()} dimensions"
    if p.features is not None:  # a backbone (DINOv2 without head): no classes; its pictures say what it sees
        return f"a backbone without a classifier head: {p.features.numel()} features"
    return ", ".join(f"{name} {q:.1%}" for name, q in p.top)


def build_app(predictors: list[Predictor], workdir: Path, max_mb: float = 20.0, max_residues: int = 1024):
    """The Gradio Blocks: one tab (and one API endpoint, /<kind>) per run."""
    import gradio as gr

    names: dict[str, int] = {}
    with gr.Blocks(title="Attention zoo") as demo:
        gr.Markdown(
            "# Attention zoo\nA prediction, the interactive attention explorer and the static pictures, "
            "for each loaded run."
        )
        for run in predictors:
            names[run.kind] = names.get(run.kind, 0) + 1
            name = run.kind if names[run.kind] == 1 else f"{run.kind}{names[run.kind]}"
            kind = INPUT_KINDS[run.modality]
            with gr.Tab(f"{name} ({Path(run.source).parent.parent.name or run.source})"):
                if run.task == "complete":  # a language model continues the prompt (greedy unless its settings sample)
                    source = gr.Textbox(label="prompt", placeholder="ROMEO:", lines=3)
                elif run.task == "unmask":  # a protein: residues typed (files: predict.py reads FASTA and PDB)
                    source = gr.Textbox(label="protein sequence (one-letter codes; a FASTA header line may come first)",
                                        placeholder="MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", lines=3)
                elif kind.read is None:
                    source = gr.Textbox(label="sentence", placeholder="Monday, March 3, 2025")
                else:
                    source = gr.File(label=f"{kind.one} (at most {max_mb:g} MB)", type="filepath")
                button = gr.Button("Run", variant="primary")
                message = gr.Markdown(elem_classes=["message"])
                prediction = gr.Textbox(
                    label={"generate": "translation", "embed": "embedding", "transcribe": "transcript",
                           "complete": "prompt + continuation",
                           "unmask": "pseudo-perplexity and top L/5 contacts"}.get(run.task, "top-5 classes")
                )
                explorer = gr.HTML(label="attention explorer")
                pictures = gr.Gallery(label="static pictures", type="filepath")
                button.click(
                    Demo(run, workdir, max_mb, max_residues).answer,
                    inputs=source,
                    outputs=[message, prediction, explorer, pictures],
                    api_name=name,
                )
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="checkpoint files or run directories, one tab each")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-mb", type=float, default=20.0, help="largest upload answered")
    parser.add_argument("--max-residues", type=int, default=1024, help="longest protein a protein tab answers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        predictors = [load(run) for run in args.runs]
        for predictor in predictors:
            if predictor.modality not in INPUT_KINDS:
                raise UserError(
                    f"{predictor.source}: no input reader for {predictor.modality!r} input "
                    f"(the app takes {', '.join(INPUT_KINDS)} models)"
                )
            if predictor.task == "unmask":  # as predict.py: a fitted head, or contact_head.safetensors beside the run
                prepare_contact_head(predictor, None)
    except UserError as err:  # the CLIs' one user-error path; a bug keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zoo-app-"))
    build_app(predictors, workdir, args.max_file_mb, args.max_residues).launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(workdir)]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
