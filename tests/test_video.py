"""Video: divided / joint space-time blocks against explicit references, the video transformer's
shape handling and errors, the circling-digits data (motion is the only label signal) and user video folders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from data.moving_digits import STEPS, make_moving_digits, render, ring_corners
from data.video import FrameControl, VideoDataModule, read_video
from models.attention import MultiHeadAttention, fused_attn
from models.layers import EncoderBlock
from models.spacetime import DividedSpaceTimeBlock, JointSpaceTimeBlock, TimePosEmbed
from models.video import VideoTransformer

B, T, N, D = 2, 3, 5, 16


def _tokens(seed: int = 0) -> Tensor:
    return torch.randn(B, T, N, D, generator=torch.Generator().manual_seed(seed))


def _torch_mha(core: MultiHeadAttention) -> nn.MultiheadAttention:
    """torch's own attention carrying the weights of one of ours: an independent kernel for references."""
    mha = nn.MultiheadAttention(core.dim, core.num_heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(core.qkv.weight)
        mha.in_proj_bias.copy_(core.qkv.bias)
        mha.out_proj.weight.copy_(core.proj.weight)
        mha.out_proj.bias.copy_(core.proj.bias)
    return mha


# ----------------------------------------------------------------------------- blocks


@torch.no_grad()
def test_divided_block_is_time_attention_per_position_then_space_attention_per_frame() -> None:
    torch.manual_seed(0)
    block = DividedSpaceTimeBlock(D, num_heads=2, mlp_ratio=2.0).eval()
    time_mha, space_mha = _torch_mha(block.attn_time), _torch_mha(block.attn_space)

    def attend(mha: nn.MultiheadAttention, seq: Tensor) -> Tensor:  # one (L, D) sequence
        return mha(seq[None], seq[None], seq[None], need_weights=False)[0][0]

    x = _tokens()
    # Reference: nn.MultiheadAttention with the same weights, one sequence at a time (no rearrange).
    mid = x.clone()
    for b in range(B):
        for n in range(N):  # temporal attention: the T frames at spatial position n
            mid[b, :, n] = x[b, :, n] + attend(time_mha, block.norm_time(x[b, :, n]))
    ref = mid.clone()
    for b in range(B):
        for t in range(T):  # spatial attention: the N patches of frame t
            ref[b, t] = mid[b, t] + attend(space_mha, block.norm_space(mid[b, t]))
    ref = ref + block.mlp(block.norm_mlp(ref))
    for fused in (True, False):
        with fused_attn(fused):
            torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)
    # Temporal attention is the only path between frames: with it switched off, changing one token of
    # frame 0 changes every patch of frame 0 (spatial attention) and nothing in the other frames.
    y = x.clone()
    y[0, 0, 0] += torch.randn(D)
    lone = DividedSpaceTimeBlock(D, num_heads=2).eval()
    lone.attn_time.proj.weight.zero_()
    lone.attn_time.proj.bias.zero_()  # temporal attention off: frames no longer meet
    changed = (lone(y) - lone(x)).abs().amax(-1)[0] > 1e-6
    assert changed[0].all() and not changed[1:].any()


@torch.no_grad()
def test_joint_block_is_an_encoder_block_over_all_frame_patch_tokens() -> None:
    torch.manual_seed(0)
    joint = JointSpaceTimeBlock(D, num_heads=2, mlp_ratio=2.0).eval()
    encoder = EncoderBlock(D, num_heads=2, mlp_ratio=2.0).eval()
    encoder.load_state_dict(joint.state_dict())
    x = _tokens()
    out = joint(x)
    assert out.shape == DividedSpaceTimeBlock(D, num_heads=2)(x).shape == (B, T, N, D)
    torch.testing.assert_close(out, encoder(x.reshape(B, T * N, D)).reshape(B, T, N, D))
    # ... and that is one attention over all T*N tokens, checked with torch's kernel and the same weights.
    h = joint.norm1(x.reshape(B, T * N, D))
    mid = x.reshape(B, T * N, D) + _torch_mha(joint.attn)(h, h, h, need_weights=False)[0]
    torch.testing.assert_close(out, (mid + joint.mlp(joint.norm2(mid))).reshape(B, T, N, D), atol=1e-5, rtol=1e-5)


def test_time_embedding_interpolates_linearly() -> None:
    emb = TimePosEmbed(8, D)
    w = emb.weight[0]
    assert torch.equal(emb(8)[0, :, 0], w)  # the trained length is the table itself
    # align_corners=False: one frame samples the middle of the table, between entries 3 and 4.
    torch.testing.assert_close(emb(1)[0, 0, 0], (w[3] + w[4]) / 2)
    # 16 frames: sample j sits at (j + 0.5) / 2 - 0.5, e.g. j=3 -> 1.25 = 0.75 * w[1] + 0.25 * w[2].
    torch.testing.assert_close(emb(16)[0, 3, 0], 0.75 * w[1] + 0.25 * w[2])
    with pytest.raises(ValueError, match="num_frames=0: expected an integer >= 1"):
        TimePosEmbed(0, D)


# ----------------------------------------------------------------------------- model


def _model(**kw) -> VideoTransformer:
    torch.manual_seed(0)
    args = dict(img_size=16, num_frames=4, patch_size=4, in_chans=1, num_classes=3, dim=32, depth=2, num_heads=4)
    return VideoTransformer(**{**args, **kw}).eval()


@pytest.mark.parametrize("attention", ["divided", "joint"])
@torch.no_grad()
def test_frame_order_matters_only_through_the_time_embedding(attention: str) -> None:
    model = _model(attention=attention, stem="patch", pos_init_std=1.0)
    x = torch.randn(2, 1, 4, 16, 16)
    reversed_frames = x.flip(2)
    assert (model(x) - model(reversed_frames)).abs().max() > 1e-3  # time matters
    # Attention over frames is permutation-equivariant and the pooling invariant: without the time
    # table the model could not tell a clip from its reverse. The time table is what breaks it.
    model.time_embed.weight.zero_()
    torch.testing.assert_close(model(x), model(reversed_frames), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["divided", "joint"])
@torch.no_grad()
def test_a_model_built_for_T_frames_runs_on_other_lengths_and_resolutions(attention: str) -> None:
    model = _model(attention=attention, stem="conv")  # built for 4 frames of 16 x 16
    for frames, h, w in [(4, 16, 16), (1, 16, 16), (9, 16, 16), (4, 24, 24), (6, 20, 32)]:
        out = model(torch.randn(2, 1, frames, h, w))
        assert out.shape == (2, 3) and torch.isfinite(out).all(), (frames, h, w)
    # Numbers, not just shapes: with the time table at 0, a still clip looks the same at any length
    # (attention over identical frames returns that frame), so the logits may not depend on T at all.
    model.time_embed.weight.zero_()
    still = torch.randn(2, 1, 1, 16, 16)
    one = model(still)
    for frames in (2, 4, 9):
        torch.testing.assert_close(model(still.expand(-1, -1, frames, -1, -1)), one, atol=1e-5, rtol=1e-5)
    # Another resolution goes through the bicubically resized spatial table: 24x24 frames -> a 6x6 grid.
    table = model.pos_embed((6, 6))
    assert table.shape == (1, 36, 32)
    ref = torch.nn.functional.interpolate(model.pos_embed.weight.reshape(1, 4, 4, 32).permute(0, 3, 1, 2),
                                          size=(6, 6), mode="bicubic", align_corners=False)
    torch.testing.assert_close(table, ref.permute(0, 2, 3, 1).reshape(1, 36, 32))


def test_fused_and_explicit_attention_kernels_agree() -> None:
    for attention in ("divided", "joint"):
        model = _model(attention=attention)
        x = torch.randn(2, 1, 4, 16, 16)
        with torch.no_grad(), fused_attn(True):
            fused = model(x)
        with torch.no_grad(), fused_attn(False):
            explicit = model(x)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_bad_inputs_and_arguments_name_the_value() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"\(2, 4, 16, 16\)"):
        model(torch.randn(2, 4, 16, 16))  # an image batch, not a clip
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 16, 16\)"):
        model(torch.randn(2, 3, 4, 16, 16))  # RGB into a grayscale model
    with pytest.raises(ValueError, match="at least 1 frame"):
        model(torch.randn(2, 1, 0, 16, 16))
    with pytest.raises(ValueError, match="smaller than one patch"):
        model(torch.randn(2, 1, 4, 2, 16))
    with pytest.raises(ValueError, match="num_frames=0: expected an integer >= 1"):
        _model(num_frames=0)
    with pytest.raises(ValueError, match="'spacetime'"):
        _model(attention="spacetime")
    with pytest.raises(ValueError, match=r"patch_size=4 is larger than the image \(img_size=2\)"):
        _model(img_size=2)
    with pytest.raises(ValueError, match="'cube'"):
        _model(stem="cube")
    with pytest.raises(ValueError, match="'zeros'"):
        _model(pos_init="zeros")


def test_sincos_init_puts_sin_and_cos_of_the_frame_index_in_the_time_table() -> None:
    model = _model(num_frames=8, dim=32, pos_init="sincos", pos_init_std=0.5)
    w = model.time_embed.weight[0]  # (8, 32): 16 frequencies from pi/2 down to pi/8
    freqs = (math.pi / 2) * (2 / 8) ** (torch.arange(16) / 15)
    t = torch.arange(8.0)[:, None]
    torch.testing.assert_close(w, 0.5 * math.sqrt(2) * torch.cat([(t * freqs).sin(), (t * freqs).cos()], 1))
    # The spatial table: first half from the row, second half from the column (4 x 4 grid here).
    grid = model.pos_embed.weight[0].reshape(4, 4, 32)
    assert torch.equal(grid[1, 0, :16], grid[1, 3, :16]) and torch.equal(grid[0, 2, 16:], grid[3, 2, 16:])


# ----------------------------------------------------------------------------- circling digits


def _digits(n: int = 40) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 28, 28, generator=g) * 255).to(torch.uint8)


def test_generator_is_deterministic_and_draws_the_digit_where_the_ring_says() -> None:
    digits = _digits()
    a = make_moving_digits(digits, 24, num_frames=8, image_size=32, digit_size=16, seed=3)
    b = make_moving_digits(digits, 24, num_frames=8, image_size=32, digit_size=16, seed=3)
    c = make_moving_digits(digits, 24, num_frames=8, image_size=32, digit_size=16, seed=4)
    assert torch.equal(a.clips, b.clips) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.clips, c.clips)
    assert a.clips.shape == (24, 1, 8, 32, 32) and a.clips.dtype == torch.uint8
    assert torch.bincount(a.labels).tolist() == [6, 6, 6, 6]
    small = torch.nn.functional.interpolate(digits.float(), size=(16, 16), mode="bilinear", antialias=True)
    for i in range(24):
        step = STEPS[int(a.labels[i])]
        for t in range(8):  # frame t: the digit's box at ring point step * t, centred on the canvas
            angle = a.theta0[i] + step * t * 2 * math.pi / 8
            r, c0 = round(8 + 8 * math.sin(angle)), round(8 + 8 * math.cos(angle))
            assert abs(int(a.rows[i, t]) - r) <= 1 and abs(int(a.cols[i, t]) - c0) <= 1
            frame = a.clips[i, 0, t].float()
            box = frame[a.rows[i, t]:a.rows[i, t] + 16, a.cols[i, t]:a.cols[i, t] + 16]
            assert (box - small[a.digits[i], 0]).abs().max() <= 1  # uint8 rounding
            assert frame.sum() == box.sum()  # nothing outside the box


def test_the_frames_of_a_clip_are_the_same_set_for_every_label_only_the_order_differs() -> None:
    # What makes the shuffled-frames control sit at chance by construction.
    small = _digits(1)[:, 0, :12, :12].numpy().repeat(4, 0)  # one digit, four clips
    theta0 = np.full(4, 0.3)
    labels = np.arange(4)
    rows, cols = ring_corners(theta0, labels, 8, 32, 12)
    clips = torch.from_numpy(render(small, rows, cols, 32))  # (4 labels, T, 32, 32)
    as_set = [sorted(f.flatten().tolist() for f in clip) for clip in clips]
    assert all(s == as_set[0] for s in as_set[1:])
    assert len({tuple(clip.flatten().tolist()) for clip in clips}) == 4  # ... but four different orders


def test_single_frames_carry_no_label() -> None:
    from data.images import load_mnist_5k

    images, _ = load_mnist_5k()
    md = make_moving_digits(images[:4000], 4000, 8, 32, 16, seed=0)
    frames = md.clips[:, 0].float() / 255  # (N, T, H, W)
    overall = frames.mean(0)  # (T, H, W)
    spread = frames.std(0)
    for k in range(4):
        per_class = frames[md.labels == k].mean(0)
        # 1,000 clips per class: a label-independent pixel mean differs from the overall one by
        # ~std / sqrt(1000) * sqrt(3/4); 5 such standard errors bounds it over all 8,192 pixels.
        assert ((per_class - overall).abs() <= 5 * spread / math.sqrt(1000) + 1e-3).all(), k
        # Where the digit is, per frame: the angle of its centre is uniform for every label.
        angles = torch.from_numpy(md.theta0[md.labels.numpy() == k])
        for t in (0, 3):
            a = angles + STEPS[k] * t * 2 * math.pi / 8
            assert torch.stack([a.cos().mean(), a.sin().mean()]).abs().max() < 0.1


def test_frame_control_shuffles_each_clip_the_same_way_every_time() -> None:
    clips = torch.arange(6 * 8).view(6, 1, 8, 1, 1).expand(-1, -1, -1, 2, 2)
    base = torch.utils.data.TensorDataset(clips, torch.zeros(6))
    shuffled = FrameControl(base, shuffle_frames=True, single_frame=False, seed=1)
    for i in range(6):
        x = shuffled[i][0]
        assert torch.equal(x, shuffled[i][0])
        assert sorted(x[0, :, 0, 0].tolist()) == clips[i, 0, :, 0, 0].tolist()
    assert any(not torch.equal(shuffled[i][0], clips[i]) for i in range(6))
    single = FrameControl(base, shuffle_frames=False, single_frame=True, seed=1)
    assert torch.equal(single[2][0], clips[2][:, :1])


def test_moving_digits_data_module_splits_digits_and_normalises() -> None:
    dm = VideoDataModule(image_size=32, num_frames=8, digit_size=16, batch_size=16)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (4000, 500, 500)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 8, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
    assert dm.num_classes == 4
    # epoch_clips: an epoch is a fresh seeded draw of that many distinct clips.
    short = VideoDataModule(batch_size=16, epoch_clips=64)
    short.setup()
    loader = short.train_dataloader()
    epochs = [torch.cat([y for _, y in loader]) for _ in range(2)]
    assert len(loader) == 4 and len(epochs[0]) == 64 and not torch.equal(epochs[0], epochs[1])
    assert torch.equal(torch.cat([y for _, y in short.train_dataloader()]), epochs[0])  # same seed, same draw
    with pytest.raises(ValueError, match="num_frames=6"):
        VideoDataModule(num_frames=6)
    with pytest.raises(ValueError, match="in_chans must be 1, got 3"):
        VideoDataModule(in_chans=3)


# ----------------------------------------------------------------------------- video folders


def _write_video(path: Path, values: list[int], size: int = 32, codec: str = "mpeg4") -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for v in values:  # flat gray frames: survive lossy coding within a few levels
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), v, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def test_read_video_samples_frames_uniformly(tmp_path: Path) -> None:
    pytest.importorskip("av")
    path = tmp_path / "ramp.mp4"
    _write_video(path, [10 * i for i in range(16)])
    clip = read_video(path, num_frames=4, image_size=8, in_chans=1)
    assert clip.shape == (1, 4, 8, 8) and clip.dtype == torch.uint8
    # linspace(0, 15, 4) -> frames 0, 5, 10, 15 -> gray 0, 50, 100, 150 (a few levels of coding error)
    assert np.allclose(clip.float().mean((0, 2, 3)).numpy(), [0, 50, 100, 150], atol=4)
    assert read_video(path, 3, 8, in_chans=3).shape == (3, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"ramp\.mp4 has 16 decodable frame\(s\), fewer than num_frames=20"):
        read_video(path, 20, 8, 1)


def test_video_folder_reads_classes_and_names_a_corrupt_file(tmp_path: Path) -> None:
    pytest.importorskip("av")
    for cls, level in (("dark", 30), ("bright", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _write_video(tmp_path / cls / f"{i}.mp4", [level] * 6, size=16)
    dm = VideoDataModule(dataset="video_folder", root=str(tmp_path), image_size=16, num_frames=4, in_chans=1,
                         batch_size=8, val_fraction=0.3, test_fraction=0.3)
    assert dm.class_names == ["bright", "dark"] and dm.num_classes == 2
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 1, 4, 16, 16)
    for clip, label in zip(x, y):  # normalised with 0.5 / 0.5: bright ~ +0.57, dark ~ -0.76
        assert (clip.mean() > 0) == (int(label) == 0)

    bad = tmp_path / "dark" / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    files = VideoDataModule(dataset="video_folder", root=str(tmp_path), image_size=16, num_frames=4,
                            in_chans=1, val_fraction=0.3, test_fraction=0.3)
    # Refused when the data is set up, before training starts, not in the middle of an epoch.
    with pytest.raises(RuntimeError, match=r"video_folder: 1 of 7 files cannot be read as videos: .*broken\.mp4 "
                                           r"\(cannot decode"):
        files.setup()
    with pytest.raises(RuntimeError, match=r"cannot decode .*broken\.mp4"):
        read_video(bad, 4, 16, 1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoDataModule(dataset="video_folder", root=str(tmp_path / "nope")).num_classes


def test_tubelet_stem_refuses_the_learned_time_table() -> None:
    from models.video import VideoTransformer

    with pytest.raises(ValueError, match="stem='tubelet' goes with pos='sincos_fixed'"):
        VideoTransformer(stem="tubelet", pos="learned")
