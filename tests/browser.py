"""Headless Debian Chromium for the explorer and app tests (Playwright, no browser download)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ZOO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def chromium_or_skip():
    """A Playwright Chromium context (fresh user-data dir); skips with the reason when unavailable."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -r requirements.txt)")
    return sync_playwright, FLAGS


class Browser:
    """One page at a time, with its console errors and every request it made recorded."""

    def __init__(self) -> None:
        sync_playwright, flags = chromium_or_skip()
        self._pw = sync_playwright().start()
        self._profile = tempfile.mkdtemp(prefix="zoo-chromium-")
        self.context = self._pw.chromium.launch_persistent_context(
            self._profile, executable_path=CHROMIUM, headless=True, args=flags, viewport={"width": 1280, "height": 900})
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
        self.context.close()
        self._pw.stop()
        shutil.rmtree(self._profile, ignore_errors=True)


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
