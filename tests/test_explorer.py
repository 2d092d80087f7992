"""The HTML explorer: pages for all four models, checked in headless Chromium against attention_maps()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import predictors
from helpers.predictors import sentence
from inference.predictor import Prediction
from models.attention import attention_maps
from models.audio import AudioSpectrogramTransformer
from models.tokenizer import BOS_ID
from models.translator import Translator
from models.video import VideoTransformer
from models.vit import VisionTransformer
from viz.explorer import MAX_TOKENS, pack, payload, render, unpack
from viz.maps import classifier_views, mass_mask

# docs/explorer_<name>.png taken here (tiny models); image, audio and video are of trained default runs,
# made by viz/explorer_screens.py (docs/explorer.md#screenshots), so the tests leave them alone
SAVED_SCREENSHOTS = ("text", "video_joint")
TOL = 2e-5  # uint16 storage: |error| <= 0.5 / 65535, plus the 6-decimal data attributes


def _pages() -> dict[str, tuple[torch.nn.Module, tuple, dict, Prediction]]:
    """Tiny random models, one input each, the explorer payload of that input and the Prediction it
    is of (made as predict.py makes it: Predictor.predict(x, maps=True))."""
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, dim=32, depth=2, num_heads=4, num_classes=5).eval()
    audio = AudioSpectrogramTransformer(num_classes=5, n_mels=16, n_fft=256, hop_length=160, patch_size=[16, 3],
                                        patch_stride=[16, 2], dim=32, depth=2, num_heads=4).eval()
    divided = VideoTransformer(img_size=16, num_frames=4, patch_size=8, dim=32, depth=2, num_classes=5).eval()
    joint = VideoTransformer(img_size=16, num_frames=4, patch_size=8, dim=32, depth=2, attention="joint",
                             num_classes=5).eval()
    tr = Translator(vocab_size=20, dim=32, encoder_depth=2, decoder_depth=2, num_heads=4, max_len=16, drop=0.0).eval()
    img, wave, clip = torch.randn(1, 1, 16, 16), torch.randn(1, 8000) * 0.1, torch.randn(1, 1, 4, 16, 16)
    src, out = torch.tensor([[5, 6, 7, 8, 9]]), [11, 12, 13, 3]
    pages = {}
    text = predictors.translator(tr, out).predict(sentence(src[0]), maps=True)
    pages["text"] = (tr, (src, out), payload(text, "t5 t6 t7 t8 t9 -> t11 t12 t13"), text)
    for name, net, x, file in (("image", vit, img, "x.png"), ("audio", audio, wave, "x.wav"),
                               ("video", divided, clip, "x.mp4"), ("video_joint", joint, clip, "x.mp4")):
        p = predictors.classifier(net).predict(x, maps=True)
        pages[name] = (net, (x,), payload(p, file), p)
    return pages


def _views(p: Prediction, time_layer: int = -1):
    """viz.maps' views of a classifier's Prediction (what its PNG pictures draw)."""
    return classifier_views(p.net, p.input, p.logits[None], p.maps, p.heads, time_layer)


PAGES = _pages()


@pytest.fixture(scope="module")
def browser():
    from helpers.browser import Browser

    b = Browser()
    yield b
    b.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("explorer")
    out = {}
    for name, (_, _, data, _) in PAGES.items():
        out[name] = folder / f"{name}.html"
        out[name].write_text(render(data), encoding="utf-8")
    return out


def _open(browser, path: Path):
    page = browser.open(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page


def _finish(browser, page, name: str) -> None:
    """No console errors, no request beyond the file itself (and its inline data: URLs), a picture that is not blank."""
    from helpers.browser import not_blank, screenshot_dir

    png = page.screenshot(full_page=name != "text_long")  # 512 tokens: a 10,000-pixel page
    assert not_blank(png), name
    folder = screenshot_dir()
    if folder is not None and name in SAVED_SCREENSHOTS:
        (folder / f"explorer_{name}.png").write_bytes(png)
    assert browser.errors == [], browser.errors
    assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests
    page.close()


def _weights(page, attr: str = "weights"):
    return json.loads(page.get_attribute("#readout", f"data-{attr}"))


def test_pack_round_trips_to_uint16_precision() -> None:
    t = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    t[0, 0, :2] = torch.tensor([0.0, 1.0])
    # float32 rounding of t * 65535 adds at most ~3e-8 to the half step
    assert np.abs(unpack(pack(t)) - t.numpy()).max() <= 0.5 / 65535 + 1e-7


def test_text_page_head_view_shows_the_attention_maps_of_each_layer_head_and_kind(browser, files) -> None:
    net, (src, out), _, _ = PAGES["text"]
    tgt_in = torch.tensor([[BOS_ID] + out[:-1]])
    _, maps = attention_maps(net, src, tgt_in)
    page = _open(browser, files["text"])
    assert page.inner_text("#translation") == "t11 t12 t13"
    assert page.locator(".col.left .tok").all_inner_texts() == ["t5", "t6", "t7", "t8", "t9"]
    # default: encoder self-attention of the last layer, all heads; hover token 2
    page.hover(".col.left .tok[data-i='2']")
    shown = _weights(page)
    assert sorted(map(int, shown)) == [0, 1, 2, 3]
    for h, row in shown.items():
        np.testing.assert_allclose(row, maps["encoder.blocks.1.attn"][0, int(h), 2].numpy(), atol=TOL)
    lines = page.locator("#hover-lines line[data-head='3']")
    assert lines.count() == 5
    np.testing.assert_allclose([float(lines.nth(j).get_attribute("data-weight")) for j in range(5)],
                               maps["encoder.blocks.1.attn"][0, 3, 2].numpy(), atol=TOL)
    # another layer, head 1 off, and the key side: the column of token 4
    page.select_option("#layer", "0")
    page.uncheck("#heads input[data-head='1']")
    page.hover(".col.right .tok[data-i='4']")
    shown = _weights(page)
    assert sorted(map(int, shown)) == [0, 2, 3] and page.locator("#hover-lines line[data-head='1']").count() == 0
    for h, col in shown.items():
        np.testing.assert_allclose(col, maps["encoder.blocks.0.attn"][0, int(h), :, 4].numpy(), atol=TOL)
    # cross-attention and decoder self-attention
    for key, name in (("2", "decoder.1.cross_attn"), ("1", "decoder.1.self_attn")):
        page.select_option("#group", key)
        page.select_option("#layer", "1")
        page.hover(".col.left .tok[data-i='3']")
        for h, row in _weights(page).items():
            np.testing.assert_allclose(row, maps[name][0, int(h), 3].numpy(), atol=TOL)
    # model view: layers x heads, click one to enlarge it
    page.click("#modelview canvas[data-layer='0'][data-head='2']")
    big = json.loads(page.get_attribute("#enlarged", "data-weights"))
    np.testing.assert_allclose(big, maps["decoder.0.self_attn"][0, 2].numpy(), atol=TOL)
    assert page.locator("#modelview canvas").count() == 2 * 4
    _finish(browser, page, "text")


def _hover_patch(page, selector: str, r: int, c: int, gh: int, gw: int, flip: bool = False) -> None:
    box = page.locator(selector).bounding_box()
    rd = gh - 1 - r if flip else r
    page.mouse.move(box["x"] + (c + 0.5) * box["width"] / gw, box["y"] + (rd + 0.5) * box["height"] / gh)


@pytest.mark.parametrize("name", ["image", "audio"])
def test_image_and_audio_pages_show_each_patch_row_per_layer_head_and_the_rollout(browser, files, name: str) -> None:
    net, (x,), data, p = PAGES[name]
    _, maps = attention_maps(net, x)
    gh, gw = data["grid"]
    page = _open(browser, files[name])
    # default: the rollout from the class token = viz.maps' view of the Prediction, up to its normalisation
    w = np.array(_weights(page))
    np.testing.assert_allclose(w / w.sum(), _views(p).tokens[0].flatten().numpy(), atol=1e-4)
    r, c = gh - 1, gw // 2
    page.select_option("#layer", "1")
    page.select_option("#head", "2")
    _hover_patch(page, "#overlay", r, c, gh, gw, data.get("flip_rows", False))
    q, k = r * gw + c, 1 if data["cls"] else 0  # the patch and the class token's offset
    assert page.get_attribute("#readout", "data-query") == str(q)
    np.testing.assert_allclose(_weights(page), maps["encoder.blocks.1.attn"][0, 2, k + q, k:].numpy(), atol=TOL)
    if k:
        assert float(page.get_attribute("#readout", "data-cls")) == pytest.approx(
            float(maps["encoder.blocks.1.attn"][0, 2, 1 + q, 0]), abs=TOL)
    page.select_option("#layer", "0")  # switching layer changes what is shown, to that layer's row
    page.select_option("#head", "mean")
    np.testing.assert_allclose(_weights(page), maps["encoder.blocks.0.attn"][0, :, k + q, k:].mean(0).numpy(), atol=TOL)
    # DINO's thresholding: the patches kept are viz.maps.mass_mask's for the row shown, the others darkened
    page.select_option("#show", "mass")
    shown = torch.tensor(_weights(page))
    kept = json.loads(page.get_attribute("#readout", "data-kept"))
    assert kept == mass_mask(shown.reshape(gh, gw), 0.6).flatten().nonzero().flatten().tolist()
    assert 0 < len(kept) < gh * gw and float(shown[kept].sum() / shown.sum()) >= 0.6
    page.select_option("#show", "raw")
    assert page.get_attribute("#readout", "data-kept") == ""
    if name == "audio":
        assert page.get_attribute("#clip", "src").startswith("data:audio/wav;base64,")
        duration = page.evaluate("() => new Promise(ok => { const a = document.getElementById('clip');"
                                 " a.readyState > 0 ? ok(a.duration) : a.addEventListener('loadedmetadata', () => ok(a.duration)); })")
        assert duration == pytest.approx(x.shape[-1] / net.sample_rate, abs=0.01)
        assert page.locator(".axis span").count() > 6
    _finish(browser, page, name)


@pytest.mark.parametrize("name", ["video", "video_joint"])
def test_video_page_shows_where_a_patch_looks_across_frames(browser, files, name: str) -> None:
    net, (x,), data, p = PAGES[name]
    _, maps = attention_maps(net, x)
    gh, gw = data["grid"]
    N = gh * gw
    page = _open(browser, files[name])
    page.select_option("#layer", "1")
    page.select_option("#head", "3")
    f, n = 2, N - 1
    _hover_patch(page, f".overlay[data-frame='{f}']", n // gw, n % gw, gh, gw)
    if name == "video":  # divided: the patch's temporal row (per position) and spatial row (in its frame)
        np.testing.assert_allclose(_weights(page, "time"), maps["blocks.1.attn_time"][n, 3, f].numpy(), atol=TOL)
        np.testing.assert_allclose(_weights(page, "space"), maps["blocks.1.attn_space"][f, 3, n].numpy(), atol=TOL)
    else:
        np.testing.assert_allclose(_weights(page), maps["blocks.1.attn"][0, 3, f * N + n].numpy(), atol=TOL)
    # the frame-to-frame matrix of the block, mean of heads, equals viz.maps' view (time_layer) of the Prediction
    page.select_option("#head", "mean")
    matrix = json.loads(page.get_attribute("#framematrix", "data-matrix"))
    np.testing.assert_allclose(matrix, _views(p, time_layer=1).time[0].numpy(), atol=1e-4)
    page.select_option("#layer", "0")
    matrix = json.loads(page.get_attribute("#framematrix", "data-matrix"))
    np.testing.assert_allclose(matrix, _views(p, time_layer=0).time[0].numpy(), atol=1e-4)
    _finish(browser, page, name)


def test_long_text_is_capped_at_max_tokens_and_the_page_says_so(browser, tmp_path) -> None:
    """600 source tokens: the page keeps 512 per axis, says so, and a hover answers within a frame budget."""
    torch.manual_seed(0)
    net = Translator(vocab_size=40, dim=16, encoder_depth=1, decoder_depth=1, num_heads=2, max_len=600, drop=0.0).eval()
    src = torch.randint(4, 40, (1, 600))
    data = payload(predictors.translator(net, [5, 6, 3]).predict(sentence(src[0]), maps=True), "long")
    assert data["groups"][0]["maps"]["shape"] == [1, 2, MAX_TOKENS, MAX_TOKENS]
    path = tmp_path / "long.html"
    path.write_text(render(data), encoding="utf-8")
    assert path.stat().st_size < 5_000_000
    page = _open(browser, path)
    assert "first 512" in page.inner_text("#notes")
    ms = page.evaluate("""() => { const t = performance.now();
        document.querySelector(".col.left .tok[data-i='300']").dispatchEvent(new MouseEvent('mouseenter'));
        return performance.now() - t; }""")
    assert len(_weights(page)["0"]) == MAX_TOKENS and ms < 500
    _finish(browser, page, "text_long")
