"""The interactive attention explorer: a Prediction as one self-contained, offline HTML page (page.py, template.html).

    Path("out.html").write_text(page(predictor.predict(x, maps=True), "digit.png"))
"""

from viz.explorer.page import (MAX_TOKENS, classifier_payload, iframe, pack, page, payload, png_data_url, render,
                               text_payload, unpack)

__all__ = ["MAX_TOKENS", "classifier_payload", "iframe", "pack", "page", "payload", "png_data_url", "render", "text_payload",
           "unpack"]
