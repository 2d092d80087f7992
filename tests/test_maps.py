"""Attention maps for every model: the one API (attention_maps), rollout, per-modality views, pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import predictors
from helpers.runs import sample_file
from models.attention import AttentionRecorder, attention_maps, fused_attn
from models.audio import AudioSpectrogramTransformer
from models.tokenizer import EOS_ID, PAD_ID
from models.translator import Translator
from models.video import VideoTransformer
from models.vit import VisionTransformer
from viz.maps import ClassifierMaps, classifier_views, divided_as_joint, rollout, translation_views

torch.manual_seed(0)


def _nets() -> dict[str, tuple[torch.nn.Module, tuple]]:
    """Tiny random models of each kind, with one input each (translator: padded source)."""
    torch.manual_seed(0)
    src = torch.tensor([[5, 6, 7, 8, 9], [5, 9, 7, PAD_ID, PAD_ID]])
    tgt = torch.tensor([[2, 11, 12, 13], [2, 12, 13, 14]])
    audio = AudioSpectrogramTransformer(num_classes=5, n_mels=16, n_fft=256, hop_length=160, patch_size=[16, 3],
                                        patch_stride=[16, 2], dim=32, depth=2, num_heads=4)
    return {
        "vit_cls": (VisionTransformer(img_size=16, patch_size=4, dim=32, depth=2, num_heads=4), (torch.randn(2, 1, 16, 16),)),
        "vit_mean": (VisionTransformer(img_size=16, patch_size=4, dim=32, depth=2, num_heads=4, pool="mean"),
                     (torch.randn(2, 1, 16, 16),)),
        "audio": (audio, (torch.randn(2, 8000) * 0.1,)),
        "video_divided": (VideoTransformer(img_size=16, num_frames=4, patch_size=8, dim=32, depth=2),
                          (torch.randn(2, 1, 4, 16, 16),)),
        "video_joint": (VideoTransformer(img_size=16, num_frames=4, patch_size=8, dim=32, depth=2, attention="joint"),
                        (torch.randn(2, 1, 4, 16, 16),)),
        "translator": (Translator(vocab_size=20, dim=32, encoder_depth=2, decoder_depth=2, num_heads=4, max_len=16,
                                  drop=0.0), (src, tgt)),
    }


NETS = list(_nets())


@pytest.mark.parametrize("name", NETS)
def test_maps_come_from_the_explicit_kernel_and_change_the_output_by_rounding_only(name: str) -> None:
    net, inputs = _nets()[name]
    net.eval()
    with torch.no_grad(), fused_attn(False):
        explicit = net(*inputs)
    for fused in (True, False):
        with fused_attn(fused), torch.no_grad():
            plain = net(*inputs)
            out, maps = attention_maps(net, *inputs)
        assert torch.equal(out, explicit), (name, fused)  # output and maps from one explicit pass
        assert (out - plain).abs().max() <= 1e-5, (name, fused)  # the fused kernel's rounding
        assert maps and all(torch.isfinite(m).all() for m in maps.values())


@pytest.mark.parametrize("name", NETS)
def test_fused_and_explicit_kernels_give_the_same_maps(name: str) -> None:
    net, inputs = _nets()[name]
    net.eval()
    with torch.no_grad():
        with fused_attn(True):
            _, fused = attention_maps(net, *inputs)
        with fused_attn(False):
            _, explicit = attention_maps(net, *inputs)
    assert fused.keys() == explicit.keys()
    for key in fused:
        torch.testing.assert_close(fused[key], explicit[key], atol=1e-6, rtol=1e-5)


def test_rows_sum_to_one_over_unmasked_keys_and_masked_keys_get_nothing() -> None:
    net, (src, tgt) = _nets()["translator"]
    net.eval()
    _, maps = attention_maps(net, src, tgt)
    pad = src.eq(PAD_ID)  # row 1 has two padded source tokens
    for name, w in maps.items():
        B, H, T, S = w.shape
        assert (B, H) == (2, 4), name
        if "cross_attn" in name or name.startswith("encoder"):
            assert torch.all(w.masked_select(pad[:, None, None, :].expand_as(w)) == 0), name
        # every query (padded encoder queries too) has a visible key, so every row sums to 1
        torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))
        if "self_attn" in name:  # causal: nothing above the diagonal
            assert torch.all(w.triu(diagonal=1) == 0), name


def test_recorder_picks_layers_by_glob_index_and_heads_and_averages() -> None:
    net, (src, tgt) = _nets()["translator"]
    net.eval()
    _, all_heads = attention_maps(net, src, tgt, layers=["decoder.*.cross_attn"])
    assert list(all_heads) == ["decoder.0.cross_attn", "decoder.1.cross_attn"]
    _, picked = attention_maps(net, src, tgt, layers=["decoder.*.cross_attn"], heads=[1, 3])
    _, mean = attention_maps(net, src, tgt, layers=["decoder.*.cross_attn"], heads=[1, 3], average_heads=True)
    for key, w in all_heads.items():
        assert torch.equal(picked[key], w[:, [1, 3]])
        torch.testing.assert_close(mean[key], (w[:, 1] + w[:, 3]) / 2)
    _, last = attention_maps(net, src, tgt, layers=[-1])
    assert list(last) == ["decoder.1.cross_attn"]  # module order: encoder, then decoder self / cross per block
    with pytest.raises(ValueError, match="no attention layer matches 'decoder.\\*.kross'"):
        AttentionRecorder(net, layers=["decoder.*.kross"])
    with pytest.raises(ValueError, match="heads=\\[4\\]"):
        AttentionRecorder(net, heads=[4])
    assert all(not m.store_weights and m.last_weights is None
               for m in net.modules() if hasattr(m, "store_weights"))  # switched off again


@pytest.mark.parametrize("name", NETS)
def test_a_reusing_recorder_gives_the_same_maps_in_memory_it_keeps(name: str) -> None:
    net, inputs = _nets()[name]
    net.eval()
    rec = AttentionRecorder(net, reuse=True)
    with torch.no_grad():
        out, fresh = attention_maps(net, *inputs)
        first = None
        for _ in range(2):  # the first call allocates the buffers, the second writes into the same memory
            with rec:
                reused_out = net(*inputs)
            assert torch.equal(reused_out, out), name
            assert rec.maps.keys() == fresh.keys() and all(torch.equal(rec.maps[k], fresh[k]) for k in fresh), name
            where = {k: m.data_ptr() for k, m in rec.maps.items()}
            assert where == {k: b.data_ptr() for k, b in rec.buffers.items()}, name  # the maps lie in the buffers
            assert first is None or where == first, name  # ... which are the same memory call after call
            first = where
        # A recorder inside the block (contact features, attention_maps) leaves the reusing one as it was.
        with rec:
            attention_maps(net, *inputs)
            net(*inputs)
        assert {k: m.data_ptr() for k, m in rec.maps.items()} == first, name
    if name != "translator":
        return
    # A longer input grows the buffer; a shorter one after it fits in the grown buffer.
    src, tgt = inputs
    longer = torch.cat([tgt, tgt[:, 1:]], dim=1)
    grown = None
    for t in (longer, tgt):
        with torch.no_grad(), rec:
            net(src, t)
        _, fresh = attention_maps(net, src, t)
        assert all(torch.equal(rec.maps[k], fresh[k]) for k in fresh)
        assert grown is None or {k: b.data_ptr() for k, b in rec.buffers.items()} == grown
        grown = {k: b.data_ptr() for k, b in rec.buffers.items()}
    # Buffers made under inference_mode (Lightning's test / predict loops) are replaced outside it, not written.
    in_inference = AttentionRecorder(net, reuse=True)
    with torch.inference_mode(), in_inference:
        net(*inputs)
    with torch.no_grad(), in_inference:
        net(*inputs)
    assert all(torch.equal(in_inference.maps[k], fresh[k]) for k in fresh)
    assert not any(b.is_inference() for b in in_inference.buffers.values())
    # Weights a caller asks for (need_weights=True) are its own, not the recorder's buffer.
    layer = net.decoder[0].cross_attn
    with torch.no_grad(), AttentionRecorder(layer, reuse=True) as own:
        for _ in range(2):
            _, returned = layer(torch.randn(2, 4, 32), torch.randn(2, 5, 32), need_weights=True)
            assert returned.data_ptr() != own.modules[""].weights_buffer.data_ptr()
    # With a gradient to compute the maps come from fresh memory (no out= in a graph), and gradients flow.
    with rec:
        net(*inputs)[0].sum().backward()
    assert all(m.data_ptr() != rec.buffers[k].data_ptr() for k, m in rec.maps.items())
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_rollout_against_a_hand_written_reference() -> None:
    rng = np.random.default_rng(0)
    layers = [rng.random((2, 5, 5)) for _ in range(3)]
    layers = [a / a.sum(-1, keepdims=True) for a in layers]
    expected = np.stack([np.eye(5)] * 2)
    for a in layers:  # Abnar & Zuidema: (A + I) / 2 per layer, renormalised, multiplied from the input up
        step = 0.5 * a + 0.5 * np.eye(5)
        step /= step.sum(-1, keepdims=True)
        expected = np.einsum("bij,bjk->bik", step, expected)
    got = rollout([torch.from_numpy(a) for a in layers])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0)
    one = torch.from_numpy(layers[0])
    torch.testing.assert_close(rollout([one], residual=0.0), one)  # no residual, one layer: the attention itself


def test_divided_attention_as_token_matrices_matches_a_loop() -> None:
    B, N, T = 2, 3, 4
    time = torch.rand(B, N, T, T).softmax(-1)
    space = torch.rand(B, T, N, N).softmax(-1)
    time_joint, space_joint = divided_as_joint(time, space)
    ref_t, ref_s = torch.zeros(B, T * N, T * N), torch.zeros(B, T * N, T * N)
    for b in range(B):
        for t in range(T):
            for n in range(N):
                for s in range(T):
                    ref_t[b, t * N + n, s * N + n] = time[b, n, t, s]
                for m in range(N):
                    ref_s[b, t * N + n, t * N + m] = space[b, t, n, m]
    assert torch.equal(time_joint, ref_t) and torch.equal(space_joint, ref_s)


@pytest.mark.parametrize("name", ["vit_cls", "vit_mean", "audio", "video_divided", "video_joint"])
def test_classifier_views_of_a_prediction_have_the_grid_shape_and_sum_to_one(name: str) -> None:
    net, (x,) = _nets()[name]
    predictor = predictors.classifier(net)
    views = []
    for i in range(len(x)):  # as predict.py makes them: one input, one Prediction, its views
        p = predictor.predict(x[i : i + 1], maps=True)
        views.append(classifier_views(net, p.input, p.logits[None], p.maps))
        assert torch.equal(views[-1].logits, net(x[i : i + 1]))  # the prediction shown is the model's own
    maps = ClassifierMaps(torch.cat([v.logits for v in views]), torch.cat([v.tokens for v in views]),
                          None if views[0].time is None else torch.cat([v.time for v in views]))
    if name.startswith("vit"):
        assert maps.tokens.shape == (2, 4, 4)
    elif name == "audio":
        # full-height patches: one row; 1 + 8000 // 160 = 51 frames, 3-frame patches at stride 2 -> 25 columns
        assert maps.tokens.shape == (2, 1, 25)
    else:
        assert maps.tokens.shape == (2, 4, 2, 2) and maps.time.shape == (2, 4, 4)
        torch.testing.assert_close(maps.time.sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(maps.tokens.flatten(1).sum(-1), torch.ones(2), atol=1e-5, rtol=0)
    assert (maps.tokens >= 0).all()


def test_translation_views_of_a_prediction_are_those_of_the_cached_decoding() -> None:
    net, (src, _) = _nets()["translator"]
    net.eval()
    one = src[:1]
    with AttentionRecorder(net, layers=["decoder.1.cross_attn"], average_heads=True) as rec:
        out = net.greedy(one, max_new_tokens=6)[0].tolist()
    last_step = rec.maps["decoder.1.cross_attn"][0, -1]  # the cached step that produced the last token
    out = out[: out.index(EOS_ID) + 1] if EOS_ID in out else out

    p = predictors.translator(net, out).predict(predictors.sentence(one[0]), maps=True)  # predict.py's path
    assert torch.equal(p.source_ids, one) and p.ids == out
    maps = translation_views(p.source_tokens, p.target_tokens, p.maps, cross_layer=-1, encoder_layer=0)
    assert maps.cross.shape == (len(out), one.shape[1]) and maps.encoder.shape == (5, 5)
    assert maps.target_tokens == [f"t{i}" for i in out] and maps.cross_layer == "decoder.1.cross_attn"
    torch.testing.assert_close(maps.cross[-1], last_step, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps.cross.sum(-1), torch.ones(len(out)))


# --- from the command line: predict.py and evaluate.py draw pictures from a trained run ---------------------
@pytest.mark.parametrize("model", ["vit", "audio", "video"])
def test_predict_and_evaluate_write_attention_pictures(model: str, tiny_runs, tmp_path: Path) -> None:
    from PIL import Image

    from helpers.cli import command, run

    trained = tiny_runs[model]  # train.py with helpers.runs.TINY_RUN
    sample = sample_file(model, tmp_path)
    proc = run("predict.py", str(trained), str(sample), "--attention-dir", str(tmp_path / "pics"), "--threads", "1")
    line = proc.stdout.splitlines()[0]
    probs = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in line.split(": ", 1)[1].split(", ")]
    n_classes = {"vit": 10, "audio": 12, "video": 4}[model]
    assert len(probs) == min(5, n_classes) and probs == sorted(probs, reverse=True) and sum(probs) <= 100.5
    picture = tmp_path / "pics" / "x_attention.png"
    with Image.open(picture) as im:
        assert im.format == "PNG" and min(im.size) > 300
    if model == "video":  # evaluate.py draws the same pictures for the first test examples
        run("evaluate.py", f"ckpt_path={trained}", "save_attention=2", "trainer.limit_test_batches=1",
            f"hydra.run.dir={tmp_path / 'ev'}")
        assert sorted(p.name for p in (tmp_path / "ev" / "attention").glob("*.png")) == \
            ["test000_attention.png", "test001_attention.png"]
    proc = command("predict.py", str(trained), str(tmp_path / "missing.png"))
    assert proc.returncode == 2 and "'" + str(tmp_path / "missing.png") + "' does not exist" in proc.stderr
