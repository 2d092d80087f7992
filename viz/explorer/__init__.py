"""The interactive attention explorer: a Prediction as one self-contained, offline HTML page.

    Path("out.html").write_text(page(predictor.predict(x, maps=True), "digit.png"))

The page is built in page.py from template.html (its script and styles); encoding.py stores its weights,
pictures and audio."""

from viz.explorer.encoding import pack, png_data_url, unpack
from viz.explorer.page import MAX_TOKENS, iframe, page, payload, render

__all__ = [
    "MAX_TOKENS",
    "iframe",
    "pack",
    "page",
    "payload",
    "png_data_url",
    "render",
    "unpack",
]
