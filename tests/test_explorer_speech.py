"""The explorer page of a transcription (viz/explorer/speech.py + template.html) in headless Chromium: the
transcript and words shown, each token's cross-attention row equal to the recorded maps, the highlighted word
following the audio's currentTime, a click on a word seeking to it; predict.py --words / --html / --attention-dir
on the same tiny random Whisper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.whisper_tiny import ALIGNMENT_HEADS, make_tiny_whisper

TOL = 2e-5  # uint16 storage (0.5 / 65535) plus the page's 6 decimals


def _wav(path: Path, seconds: float = 0.3, seed: int = 1) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.1) + 0.05 * rng.standard_normal(len(t))
    sf.write(str(path), wave.astype(np.float32), 16000, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny Whisper that stops after a few tokens at more than one time, its prediction of a 0.3 s wav (maps and
    words), and the page of it."""
    from inference.inputs import read
    from inference.load import load
    from viz.explorer import page

    folder = tmp_path_factory.mktemp("speech_page")
    model = make_tiny_whisper(folder / "tiny", std=1.0, eos_bias=4.0, seed=1)
    torch.set_num_threads(1)
    predictor = load(str(model))
    wav = _wav(folder / "speech.wav")
    p = predictor.predict(read(predictor, str(wav)), maps=True, words=True)
    html = folder / "speech.html"
    html.write_text(page(p, "speech.wav"), encoding="utf-8")
    return model, wav, p, html


@pytest.fixture(scope="module")
def browser():
    from helpers.browser import Browser

    b = Browser()
    yield b
    b.close()


def _open(browser, path: Path):
    page = browser.open(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page


def test_page_shows_the_words_and_each_rows_cross_attention(made, browser) -> None:
    _, _, p, html = made
    page = _open(browser, html)
    assert page.inner_text("#translation") == p.text
    assert page.locator("#words .word").all_inner_texts() == [w.text.strip() for w in p.words]
    assert page.locator(".srow").all_inner_texts() == p.target_tokens
    first = p.prompt_length - 1  # the query that produced the first generated token
    for layer, head in (("1", "2"), ("0", "mean")):
        page.select_option("#layer", layer)
        page.select_option("#head", head)
        for i in (0, len(p.target_tokens) - 1):
            page.hover(f".srow[data-i='{i}']")
            shown = json.loads(page.get_attribute("#readout", "data-weights"))
            m = p.maps[f"decoder.{layer}.cross_attn"][0, :, first + i, : p.covered]
            expected = m.mean(0) if head == "mean" else m[int(head)]
            assert len(shown) == p.covered
            np.testing.assert_allclose(shown, expected.numpy(), atol=TOL)
    page.select_option("#layer", "align")  # the heads the words were aligned with
    page.hover(".srow[data-i='1']")
    expected = torch.stack([p.maps[f"decoder.{a}.cross_attn"][0, h, first + 1, : p.covered]
                            for a, h in ALIGNMENT_HEADS]).mean(0)
    np.testing.assert_allclose(json.loads(page.get_attribute("#readout", "data-weights")), expected.numpy(),
                               atol=TOL)
    assert browser.errors == [], browser.errors
    assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests
    page.close()


def test_the_highlighted_word_follows_the_audio_and_a_click_seeks(made, browser) -> None:
    _, _, p, html = made
    page = _open(browser, html)
    page.wait_for_function("document.getElementById('clip').readyState >= 1")
    spoken = [i for i, w in enumerate(p.words) if w.end > w.start]
    assert len(spoken) >= 2, [(w.start, w.end) for w in p.words]
    for i in spoken:
        middle = (p.words[i].start + p.words[i].end) / 2
        page.evaluate(f"document.getElementById('clip').currentTime = {middle}")
        page.wait_for_function(f"document.getElementById('words').dataset.active === '{i}'")
        assert page.locator("#words .word.active").all_inner_texts() == [p.words[i].text.strip()]
    from helpers.browser import not_blank, screenshot_dir

    page.hover(f".srow[data-i='{spoken[-1]}']")  # docs/explorer_speech.png: the last word playing, its row read out
    png = page.screenshot(full_page=True)
    assert not_blank(png)
    if screenshot_dir() is not None:
        (screenshot_dir() / "explorer_speech.png").write_bytes(png)
    last = p.words[spoken[-1]]
    page.click(f"#words .word[data-i='{spoken[0]}']")
    page.wait_for_function(f"Math.abs(document.getElementById('clip').currentTime - {p.words[spoken[0]].start}) < 1e-3")
    assert page.get_attribute("#words", "data-active") == str(spoken[0])
    assert last.end <= 0.3
    assert browser.errors == [], browser.errors
    page.close()


def test_predict_py_prints_words_draws_their_boundaries_and_writes_the_page(made, tmp_path: Path, capsys) -> None:
    import predict
    from inference.speech_words import word_lines

    model, wav, p, _ = made
    capsys.readouterr()
    pictures, html = tmp_path / "pictures", tmp_path / "page.html"
    assert predict.main([str(model), str(wav), "--words", "--attention-dir", str(pictures), "--html", str(html),
                         "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == p.text and out[1: 1 + len(p.words)] == word_lines(p.words)
    assert out[1].startswith("word 0.00 ") and len(out[1].split()) == 4
    assert sorted(x.name for x in pictures.iterdir()) == ["speech_cross_attention.png"]
    assert html.is_file() and '"kind":"speech"' in html.read_text()
    assert predict.main([str(model), str(wav), "--threads", "1"]) == 0  # no --words: the transcript alone
    assert capsys.readouterr().out.splitlines() == [p.text]


def test_a_page_too_large_for_every_head_keeps_the_alignment_heads_mean(made, monkeypatch) -> None:
    """When the heads of each layer are averaged to keep the page small, the words' map (the mean of the
    alignment heads) is still the exact one."""
    from viz.explorer import encoding, payload, unpack

    _, _, p, _ = made
    monkeypatch.setattr(encoding, "MAX_WEIGHTS", 10)
    data = payload(p, "speech.wav")
    assert data["heads"] == ["mean"] and any("mean over heads" in n for n in data["notes"])
    first = p.prompt_length - 1
    expected = torch.stack([p.maps[f"decoder.{a}.cross_attn"][0, h, first:, : p.covered]
                            for a, h in ALIGNMENT_HEADS]).mean(0)
    np.testing.assert_allclose(unpack(data["aligned"]), expected.numpy(), atol=1e-5)
    assert data["alignment"] == ALIGNMENT_HEADS and data["seconds"] == pytest.approx(p.covered * 0.02)
