"""Headless Debian Chromium through Playwright (no browser download), for the explorer tests and screenshots.

    with launch() as context:                      # a fresh profile, removed on exit
        page = context.new_page(); page.goto(path.as_uri())

Used by tests/browser.py (the browser tests) and viz/explorer_screens.py (the docs' screenshots): the
same binary, flags and viewport, so the pictures in docs/ are what the tests see.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = os.environ.get("ZOO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}


def unavailable() -> str | None:
    """Why a browser cannot be launched here (None when it can)."""
    if not Path(CHROMIUM).is_file():
        return f"Chromium not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements.txt)"
    return None


class Launched:
    """A started Playwright with one persistent Chromium context on a fresh user-data dir."""

    def __init__(self, viewport: dict[str, int] | None = None) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._profile = tempfile.mkdtemp(prefix="zoo-chromium-")
        try:
            self.context = self._pw.chromium.launch_persistent_context(
                self._profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport=viewport or VIEWPORT)
        except Exception:
            self._pw.stop()
            shutil.rmtree(self._profile, ignore_errors=True)
            raise

    def close(self) -> None:
        self.context.close()
        self._pw.stop()
        shutil.rmtree(self._profile, ignore_errors=True)


@contextmanager
def launch(viewport: dict[str, int] | None = None) -> Iterator:
    """The browser context; closed and its profile removed on exit."""
    browser = Launched(viewport)
    try:
        yield browser.context
    finally:
        browser.close()
