"""Headless Debian Chromium for the explorer and app tests (Playwright, no browser download).

The launch itself (binary, flags, fresh profile) is viz/explorer/browser.py, shared with the docs'
screenshot script viz/explorer_screens.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from viz.explorer.browser import CHROMIUM, FLAGS, Launched, unavailable  # noqa: F401  (CHROMIUM, FLAGS: re-exported)


def chromium_or_skip() -> None:
    """Skips the test with the reason when Chromium or Playwright is unavailable."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)


class Browser:
    """One page at a time, with its console errors and every request it made recorded."""

    def __init__(self) -> None:
        chromium_or_skip()
        self._launched = Launched()
        self.context = self._launched.context
        self.errors: list[str] = []
        self.requests: list[str] = []

    def open(self, url: str):
        page = self.context.new_page()
        self.errors, self.requests = [], []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.goto(url)
        return page

    def close(self) -> None:
        self._launched.close()


def screenshot_dir() -> Path | None:
    """Where tests also save their screenshots for the docs (EXPLORER_SCREENSHOTS=docs), if asked."""
    folder = os.environ.get("EXPLORER_SCREENSHOTS")
    return Path(folder) if folder else None


def not_blank(png: bytes) -> bool:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0)) > 50 and float(pixels.std()) > 10
