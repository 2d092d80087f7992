"""A local demo of the zoo's models and their attention: `python app.py RUN_DIR [RUN_DIR ...]`.

    python app.py outputs/train/runs/<vit run> outputs/train/runs/<translator run>   # http://127.0.0.1:7860

One tab per run (checkpoint file or run directory, as predict.py takes): upload an image, a wav or a
video, or type a sentence, and get the prediction (the same as predict.py's), the interactive explorer
(viz/explorer, in an iframe: the page runs its own scripts, offline) and the static pictures
(predict.py --attention-dir). Bad input (wrong file type, empty sentence, a file too large, a corrupt
file) is answered with a message and the app keeps serving. Listens on 127.0.0.1 unless --host says
otherwise; Gradio's analytics are off.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from viz.explain import Loaded, explain_classifier, explain_translation, load_trained, read_input, slug  # noqa: E402
from viz.explorer import explore_input, explore_sentence  # noqa: E402
from utils.errors import UserError  # noqa: E402

SUFFIXES = {
    "image": {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "audio": {".wav", ".flac", ".ogg"},
    "video": {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"},
}


def iframe(page: str, height: int = 900) -> str:
    """The explorer page in an iframe: gr.HTML inserts markup without running its scripts, srcdoc runs them."""
    return (f'<iframe title="attention explorer" sandbox="allow-scripts" style="width:100%;height:{height}px;'
            f'border:1px solid #ddd" srcdoc="{html.escape(page, quote=True)}"></iframe>')


def format_top(top: list[tuple[str, float]]) -> str:
    """The classes as predict.py prints them: 'name 97.1%, name 1.2%, ...'."""
    return ", ".join(f"{name} {p:.1%}" for name, p in top)


class Demo:
    """The handlers of one run's tab: each returns (message, prediction, explorer iframe, picture paths)."""

    def __init__(self, loaded: Loaded, workdir: Path, max_mb: float) -> None:
        self.loaded, self.workdir, self.max_bytes = loaded, workdir, int(max_mb * 1e6)

    def _folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="pictures-", dir=self.workdir))

    def translate(self, sentence: str | None) -> tuple[str, str, str, list[str]]:
        try:
            if not sentence or not sentence.strip():
                raise ValueError("the sentence is empty; type text to translate")
            text, page = explore_sentence(self.loaded, sentence)
            _, pictures = explain_translation(self.loaded, sentence, self._folder(), slug(sentence))
            return "", text, iframe(page), [str(p) for p in pictures]
        except Exception as err:  # any bad input becomes a message; the app keeps serving
            return f"error: {err}", "", "", []

    def classify(self, path: str | None) -> tuple[str, str, str, list[str]]:
        try:
            if not path:
                raise ValueError(f"no file: upload a {self.loaded.kind} file")
            file = Path(path)
            allowed = SUFFIXES[self.loaded.kind]
            if file.suffix.lower() not in allowed:
                raise ValueError(f"{file.name}: a {self.loaded.kind} model takes {', '.join(sorted(allowed))} files")
            if file.stat().st_size > self.max_bytes:
                raise ValueError(f"{file.name} is {file.stat().st_size / 1e6:.1f} MB; the limit is "
                                 f"{self.max_bytes / 1e6:.0f} MB (--max-file-mb)")
            try:
                x = read_input(self.loaded, str(file))
            except Exception as err:
                raise ValueError(f"could not read {file.name} as {self.loaded.kind}: {err}") from err
            top, page = explore_input(self.loaded, x, file.name)
            _, pictures = explain_classifier(self.loaded, x, self._folder(), slug(file.stem))
            return "", format_top(top), iframe(page), [str(p) for p in pictures]
        except Exception as err:
            return f"error: {err}", "", "", []


INPUT_LABELS = {"image": "an image", "audio": "a wav / flac / ogg clip", "video": "a video"}


def build_app(loaded: list[Loaded], workdir: Path, max_mb: float = 20.0):
    """The Gradio Blocks: one tab (and one API endpoint, /<kind>) per run."""
    import gradio as gr

    names: dict[str, int] = {}
    with gr.Blocks(title="Attention zoo") as demo:
        gr.Markdown("# Attention zoo\nA prediction, the interactive attention explorer and the static pictures, "
                    "for each loaded run.")
        for run in loaded:
            names[run.kind] = names.get(run.kind, 0) + 1
            name = run.kind if names[run.kind] == 1 else f"{run.kind}{names[run.kind]}"
            handler = Demo(run, workdir, max_mb)
            with gr.Tab(f"{name} ({run.ckpt_file.parent.parent.name})"):
                if run.kind == "translator":
                    source = gr.Textbox(label="sentence", placeholder="Monday, March 3, 2025")
                else:
                    source = gr.File(label=f"{INPUT_LABELS[run.kind]} (at most {max_mb:g} MB)", type="filepath")
                button = gr.Button("Run", variant="primary")
                message = gr.Markdown(elem_classes=["message"])
                prediction = gr.Textbox(label="translation" if run.kind == "translator" else "top-5 classes")
                explorer = gr.HTML(label="attention explorer")
                pictures = gr.Gallery(label="static pictures", type="filepath")
                fn = handler.translate if run.kind == "translator" else handler.classify
                button.click(fn, inputs=source, outputs=[message, prediction, explorer, pictures], api_name=name)
    return demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="checkpoint files or run directories, one tab each")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-mb", type=float, default=20.0, help="largest upload answered")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        loaded = [load_trained(run) for run in args.runs]
    except UserError as err:  # the CLIs' one user-error path; a bug keeps its traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zoo-app-"))
    build_app(loaded, workdir, args.max_file_mb).launch(server_name=args.host, server_port=args.port,
                                                        allowed_paths=[str(workdir)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
