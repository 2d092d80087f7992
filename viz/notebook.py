"""The explorer of one input inline in a Jupyter notebook, offline: `explore(run or source, input)`.

    from viz.notebook import explore
    explore("outputs/train/runs/<run>", "digit.png")   # a cell's last expression: the page shows

The page is the one predict.py --html writes, in an iframe's srcdoc: self-contained, no server, no
request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.inputs import gather, read
from inference.load import load
from inference.predictor import Prediction, Predictor
from viz.explorer import iframe, page


@dataclass
class Explored:
    """A prediction and its explorer page; a notebook shows it through `_repr_html_`."""

    prediction: Prediction
    html: str
    height: int = 900

    def _repr_html_(self) -> str:
        return iframe(self.html, self.height)

    def save(self, path: str | Path) -> Path:
        """The page as a file, as predict.py --html writes it."""
        Path(path).write_text(self.html, encoding="utf-8")
        return Path(path)


def explore(model: str | Path | Predictor, item: str | Path, title: str | None = None) -> Explored:
    """Load a run or pretrained source (or take a loaded Predictor, to explore several inputs
    without reloading), predict one input (a file, or a sentence for a text model) and return its
    explorer."""
    predictor = model if isinstance(model, Predictor) else load(model)
    first = gather(predictor, [str(item)])[0]  # a text file stands for its first sentence here
    p = predictor.predict(read(predictor, first), maps=True, words=True)  # words: a speech page plays them
    if title is None:
        title = (
            f"{first} -> {p.text}"
            if p.text is not None
            else (first if isinstance(p.input, str) else Path(first).name)
        )
    return Explored(p, page(p, title))
