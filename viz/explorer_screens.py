"""Screenshot of a run's explorer page on one input, as docs/explorer_*.png are made.

    python -m viz.explorer_screens RUN_DIR INPUT OUT.png [--hover-patch N] [--frame F] [--layer L] [--head H]

The page is written by `predict.py RUN_DIR INPUT --html ...` (a temporary file unless --html is given),
opened in headless Chromium with the browser tests' launch (viz/explorer/browser.py), the layer and
head chosen in its menus, patch N clicked (pinned: its attention row is drawn, the patch outlined in
yellow; N = row * grid_width + column in the model's patch order, in frame F for a video), and the
page saved as a PNG, trimmed to what is drawn (--no-trim keeps the whole 1280-pixel-wide page).
Without --hover-patch the page is shot as it opens (image / audio: the rollout).

    python -m viz.samples samples/ --n 5 --only image        # test examples as files
    python -m viz.explorer_screens runs/vit samples/digit_0_label0.png docs/explorer_image.png --hover-patch 8 --layer 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_page(run: str, item: str, html: Path, threads: int = 1) -> str:
    """predict.py RUN INPUT --html html; returns what it printed (the prediction)."""
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), run, item, "--html", str(html),
                           "--threads", str(threads)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"predict.py failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout.strip()


def trim(png: bytes, margin: int = 16) -> bytes:
    """The screenshot cut to what is drawn on the page (the white right and bottom left out), plus a margin."""
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    ink = np.argwhere((np.asarray(image) < 245).any(axis=-1))
    if len(ink) == 0:
        return png
    (top, left), (bottom, right) = ink.min(0), ink.max(0)
    box = (max(0, left - margin), max(0, top - margin), min(image.width, right + 1 + margin),
           min(image.height, bottom + 1 + margin))
    buf = io.BytesIO()
    image.crop(box).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def shoot(html: Path, out: Path, patch: int | None = None, frame: int = 0, layer: str | None = None,
          head: str | None = None, crop: bool = True) -> str:
    """Open the page, choose layer / head, pin a patch, save a full-page screenshot; returns the readout."""
    from viz.explorer.browser import launch

    errors: list[str] = []
    with launch() as context:
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(html.resolve().as_uri())
        page.wait_for_selector("body[data-ready='1']")
        kind, (gh, gw), flip = page.evaluate("() => [D.kind, D.grid, !!D.flip_rows]")
        if kind == "text":
            raise SystemExit("text pages have no patches: use tests/test_explorer.py's screenshot")
        if layer is not None:
            page.select_option("#layer", layer)
        if head is not None:
            page.select_option("#head", head)
        if patch is not None:
            if not 0 <= patch < gh * gw:
                raise SystemExit(f"--hover-patch {patch}: the grid is {gh} x {gw} = {gh * gw} patches (0..{gh * gw - 1})")
            r, c = divmod(patch, gw)
            shown_row = gh - 1 - r if flip else r
            selector = f".overlay[data-frame='{frame}']" if kind == "video" else "#overlay"
            box = page.locator(selector).bounding_box()
            if box is None:
                raise SystemExit(f"--frame {frame}: no such frame on the page")
            x, y = box["x"] + (c + 0.5) * box["width"] / gw, box["y"] + (shown_row + 0.5) * box["height"] / gh
            page.mouse.move(x, y)
            page.mouse.click(x, y)  # pins it: the picture no longer depends on where the mouse is
            page.mouse.move(1, 1)
        readout = page.inner_text("#readout")
        out.parent.mkdir(parents=True, exist_ok=True)
        png = page.screenshot(full_page=True)
    out.write_bytes(trim(png) if crop else png)
    if errors:
        raise SystemExit(f"console errors on the page: {errors}")
    return readout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory or checkpoint (as for predict.py)")
    parser.add_argument("input", help="an image, wav / flac or video file")
    parser.add_argument("out", type=Path, help="the screenshot (PNG)")
    parser.add_argument("--hover-patch", type=int, default=None, help="patch to pin (row * grid width + column)")
    parser.add_argument("--frame", type=int, default=0, help="video: the frame the patch is in")
    parser.add_argument("--layer", default=None, help="layer / block index, or 'rollout' (default: the page's)")
    parser.add_argument("--head", default=None, help="head index or 'mean' (default: mean of heads)")
    parser.add_argument("--html", type=Path, default=None, help="keep the page here too")
    parser.add_argument("--no-trim", action="store_true", help="keep the whole 1280-pixel-wide page")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zoo-screens-") as tmp:
        html = args.html or Path(tmp) / "page.html"
        print(write_page(args.run, args.input, html, args.threads))
        print(shoot(html, args.out, args.hover_patch, args.frame, args.layer, args.head, not args.no_trim))
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
