"""The demo app (app.py) and predict.py --html on tiny trained runs of all four models: gradio_client calls per
tab equal predict.py, bad input is answered with a message, and the page loads in headless Chromium."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers.app_server import free_port
from helpers.cli import run
from helpers.runs import sample_file

SENTENCE = "Monday, March 3, 2025"


@pytest.fixture(scope="module")
def runs(tiny_runs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """kind -> (tiny trained run, a sample input file) for the translator, ViT, audio and video models."""
    base = tmp_path_factory.mktemp("samples")
    out = {}
    for kind, model in (("translator", "translator"), ("image", "vit"), ("audio", "audio"), ("video", "video")):
        out[kind] = (tiny_runs[model], None if kind == "translator" else sample_file(model, base))
    return out


def _predicted(runs, kind: str) -> tuple[str, str]:
    """What predict.py prints for the sample: the translation, or the classes after 'file: '; and its notes
    (`note: <file>: ...` for a file), as the app's message box shows them (`note: ...`)."""
    folder, sample = runs[kind]
    done = run("predict.py", str(folder), SENTENCE if sample is None else str(sample), "--threads", "1")
    line = done.stdout.strip().splitlines()[0]
    notes = [n.replace(f"note: {sample}: ", "note: ") for n in done.stderr.splitlines() if n.startswith("note: ")]
    return (line if sample is None else line.split(": ", 1)[1]), "; ".join(notes)


def test_predict_html_writes_one_offline_explorer_per_input(runs, tmp_path) -> None:
    """predict.py --html: one self-contained page per input, its prediction at the top."""
    for kind, (folder, sample) in runs.items():
        out = tmp_path / kind / "page.html"
        run("predict.py", str(folder), SENTENCE if sample is None else str(sample), "--html", str(out), "--threads", "1")
        page = out.read_text(encoding="utf-8")
        assert f'"kind":"{"text" if kind == "translator" else kind}"' in page
        assert "src=\"http" not in page and "href=\"http" not in page and out.stat().st_size < 3_000_000
    # evaluate.py save_attention=N writes the same page beside the PNGs of each test example
    run("evaluate.py", f"ckpt_path={runs['video'][0]}", "save_attention=1", "trainer.limit_test_batches=1",
        f"hydra.run.dir={tmp_path / 'ev'}")
    assert '"kind":"video"' in (tmp_path / "ev" / "attention" / "test000.html").read_text(encoding="utf-8")


def test_app_tabs_answer_like_predict_and_bad_input_with_a_message(runs, tmp_path) -> None:
    from gradio_client import Client, handle_file

    from app import build_app
    from inference.load import load as load_trained

    loaded = [load_trained(runs[k][0]) for k in ("translator", "image", "audio", "video")]
    demo = build_app(loaded, tmp_path, max_mb=1.0)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(tmp_path)])
    url = f"http://127.0.0.1:{port}/"
    try:
        client = Client(url, verbose=False)
        bad = {"translator": "   ", "image": tmp_path / "notes.txt", "audio": tmp_path / "broken.wav",
               "video": tmp_path / "huge.mp4"}
        bad["image"].write_text("not an image")
        bad["audio"].write_bytes(b"RIFF\x00\x01garbage" * 10)
        bad["video"].write_bytes(b"\x00" * 1_500_000)
        expected_error = {"translator": "empty", "image": "takes", "audio": "could not read", "video": "limit"}
        timings = {}
        for kind in ("translator", "image", "audio", "video"):
            folder, sample = runs[kind]
            arg = bad[kind] if kind == "translator" else handle_file(str(bad[kind]))
            message, prediction, explorer, pictures = client.predict(arg, api_name=f"/{kind}")
            assert message.startswith("error:") and expected_error[kind] in message and not prediction, (kind, message)
            start = time.perf_counter()
            message, prediction, explorer, pictures = client.predict(
                SENTENCE if sample is None else handle_file(str(sample)), api_name=f"/{kind}")
            timings[kind] = time.perf_counter() - start
            # the same prediction, and predict.py's notes (a file's in one line, joined by "; ")
            assert (prediction, message.replace("\n\nnote: ", "; ")) == _predicted(runs, kind), kind
            assert explorer.startswith("<iframe") and "srcdoc=" in explorer and len(pictures) >= 1, kind
        print("app response time per request (s):", {k: round(v, 2) for k, v in timings.items()})
        _browse(url, runs["image"][1])
    finally:
        demo.close()


def _browse(url: str, image: Path) -> None:
    """The page in Chromium: no console errors, no request beyond the app; an upload shows the explorer."""
    from helpers.browser import Browser, not_blank, screenshot_dir

    browser = Browser()
    try:
        page = browser.open(url)
        page.wait_for_selector("text=Run", timeout=30_000)
        page.get_by_role("tab", name="image").click()
        page.locator("input[type=file]").last.set_input_files(str(image))
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Run").last.click()
        frame = page.frame_locator("iframe[title='attention explorer']").last
        frame.locator("#readout").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        png = page.screenshot(full_page=True)
        assert not_blank(png)
        if screenshot_dir() is not None:
            (screenshot_dir() / "explorer_app.png").write_bytes(png)
        assert browser.errors == [], browser.errors
        assert all(u.startswith((url, "data:", "blob:", "about:")) for u in browser.requests), browser.requests
    finally:
        browser.close()


def test_an_animated_gif_is_a_clip_to_the_app_and_to_predict_alike(runs, tmp_path) -> None:
    """.gif is a video kind's extension (INPUT_KINDS, the one table): the app's extension check lets it through
    and answers what predict.py prints for it."""
    import numpy as np
    from PIL import Image

    from app import Demo
    from inference.inputs import INPUT_KINDS
    from inference.load import load

    assert ".gif" in INPUT_KINDS["video"].extensions and ".gif" in INPUT_KINDS["image"].extensions
    g = np.random.default_rng(0)
    frames = [Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(10)]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    folder = runs["video"][0]
    printed = run("predict.py", str(folder), str(gif), "--threads", "1").stdout.strip().splitlines()[0]
    message, prediction, explorer, pictures = Demo(load(folder), tmp_path, 1.0).answer(str(gif))
    assert message == "note: sampled 8 of 10 frames evenly" and prediction == printed.split(": ", 1)[1]
    assert explorer.startswith("<iframe")


def test_a_bad_command_line_is_one_error_line(capsys) -> None:
    import pytest

    from app import main

    with pytest.raises(SystemExit) as stop:
        main(["run_dir", "--max-file-mb", "many"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: argument --max-file-mb: "), err
