"""Audio: the log-mel front end against torch.stft + mel filters, SpecAugment only in training, clips of
other lengths, the espeak-ng keyword generator (deterministic, disjoint voices), audio folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from data.audio import AudioDataModule, random_shift, speed_perturb
from data.keywords import CLASSES, SPLITS, VARIANT_FAMILIES, VARIANTS, KeywordSpec, load_keywords, render, voices
from models.audio import AudioSpectrogramTransformer, SpecAugment, TimePosEmbed

sf = pytest.importorskip("soundfile")
TINY = KeywordSpec(train_per_class=2, val_per_class=1, test_per_class=1)


def small_model(**kw) -> AudioSpectrogramTransformer:
    args = dict(dim=32, depth=1, num_heads=2, norm_mean=-5.0, norm_std=4.0) | kw
    return AudioSpectrogramTransformer(**args).eval()


# ----------------------------------------------------------------------------- the model


def test_log_mel_front_end_matches_stft_and_mel_filters() -> None:
    torch.manual_seed(0)
    model = small_model(n_mels=40, n_fft=512, hop_length=128, f_min=30.0, f_max=7000.0)
    wave = torch.randn(3, 8000) * 0.1
    # Independent reference: centred, reflect-padded STFT with a periodic Hann window, power,
    # HTK mel filters without area normalisation, log(x + 1e-6), fixed mean / std.
    spec = torch.stft(wave, n_fft=512, hop_length=128, window=torch.hann_window(512), center=True,
                      pad_mode="reflect", return_complex=True).abs() ** 2  # (B, 257, frames)
    fb = AF.melscale_fbanks(257, 30.0, 7000.0, 40, 16000, norm=None, mel_scale="htk")  # (257, 40)
    ref = ((fb.T @ spec + 1e-6).log() + 5.0) / 4.0
    out = model.spectrogram(wave)
    assert out.shape == (3, 1, 40, 1 + 8000 // 128)
    torch.testing.assert_close(out[:, 0], ref, rtol=1e-4, atol=1e-4)


def test_specaugment_masks_whole_rows_and_columns_in_training_only() -> None:
    torch.manual_seed(0)
    aug = SpecAugment(freq_mask=8, time_mask=16, num_masks=2)
    x = torch.randn(16, 1, 64, 101) + 10.0  # no natural zeros
    assert torch.equal(aug.eval()(x), x)
    y = aug.train()(x)
    masked = y != x
    assert masked.any() and (y[masked] == 0).all()
    for m in masked[:, 0]:
        rows, cols = m.all(dim=1), m.all(dim=0)  # fully masked mel bins / frames
        assert torch.equal(m, rows[:, None] | cols[None, :])  # nothing else was touched
        assert rows.sum() <= 2 * 8 and cols.sum() <= 2 * 16
    # Per-example masks: the examples are not all masked alike.
    assert len({tuple(m.all(dim=1).tolist()) for m in masked[:, 0]}) > 1
    # Through the model: eval is deterministic, training is not.
    model = small_model()
    wave = torch.randn(2, 16000) * 0.1
    torch.testing.assert_close(model(wave), model(wave), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model.spectrogram(wave), model.spectrogram(wave))


def test_vtlp_moves_a_tone_as_a_shorter_vocal_tract_would() -> None:
    # Analytic reference: warping by a shows a tone of f Hz where the plain front end shows a tone of a * f Hz
    # (same mel band, same share of the power in each band), at any time; training mode only.
    model = small_model(n_mels=40, n_fft=480, hop_length=320, warp_range=[0.8, 1.4])
    t = torch.arange(16000) / 16000
    frontend = model.frontend
    for a in (0.8, 1.0, 1.1, 1.4):
        warped = frontend.warp(frontend.mel.spectrogram(torch.sin(2 * torch.pi * 1000.0 * t)[None]), torch.tensor([a]))
        ref = frontend.mel.mel_scale(frontend.mel.spectrogram(torch.sin(2 * torch.pi * 1000.0 * a * t)[None]))
        share, ref_share = warped[0, :, 25] / warped[0, :, 25].sum(), ref[0, :, 25] / ref[0, :, 25].sum()
        assert share.argmax() == ref_share.argmax()
        torch.testing.assert_close(share, ref_share, rtol=0, atol=0.06)
    wave = torch.randn(8, 16000) * 0.1
    torch.testing.assert_close(model.spectrogram(wave), model.spectrogram(wave), rtol=0, atol=0)  # eval: no warp
    frontend.train()
    assert not torch.equal(frontend(wave), frontend(wave))
    with pytest.raises(ValueError, match=r"warp_range.*\[1.2, 0.9\]"):
        small_model(warp_range=[1.2, 0.9])


def test_position_table_crops_shorter_clips_and_resizes_longer_ones() -> None:
    torch.manual_seed(0)
    model = small_model(stem="patch", patch_size=16, patch_stride=10)  # 64 x 101 -> 5 x 9
    pos = model.pos_embed
    assert pos.grid_size == (5, 9)
    table = pos.weight.reshape(1, 5, 9, -1)
    torch.testing.assert_close(pos((5, 4)), table[:, :, :4].flatten(1, 2), rtol=0, atol=0)
    wide = F.interpolate(table.permute(0, 3, 1, 2), size=(5, 19), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos((5, 19)), wide.permute(0, 2, 3, 1).flatten(1, 2))
    resize = TimePosEmbed((5, 9), 8, mode="resize")
    short = F.interpolate(resize.weight.reshape(1, 5, 9, 8).permute(0, 3, 1, 2), size=(5, 4), mode="bicubic",
                          align_corners=False)
    torch.testing.assert_close(resize((5, 4)), short.permute(0, 2, 3, 1).flatten(1, 2))
    # The model classifies clips of other lengths: 0.5 s (crop) and 2 s (resize).
    for seconds, grid_w in ((0.5, 4), (2.0, 19)):
        wave = torch.randn(2, int(16000 * seconds)) * 0.1
        assert model.patch_embed.grid_for(tuple(model.spectrogram(wave).shape[-2:])) == (5, grid_w)
        assert model(wave).shape == (2, 12)
    conv = small_model(stem="conv", patch_size=16)
    assert conv(torch.randn(2, 24000) * 0.1).shape == (2, 12)


def test_bad_inputs_fail_with_the_value() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"clip too short: 100 samples"):
        model(torch.zeros(2, 100))
    with pytest.raises(ValueError, match=r"\(2, 3, 16000\)"):
        model(torch.zeros(2, 3, 16000))
    assert model(torch.zeros(2, 1, 16000)).shape == (2, 12)  # (B, 1, samples) is mono too
    with pytest.raises(ValueError, match="pos_time"):
        small_model(pos_time="stretch")
    with pytest.raises(ValueError, match="stem"):
        small_model(stem="mel")


# ----------------------------------------------------------------------------- the keyword generator


def test_voices_are_disjoint_between_splits() -> None:
    sets = {s: set(voices(s)) for s in SPLITS}
    assert not sets["train"] & sets["test"] and not sets["train"] & sets["val"] and not sets["val"] & sets["test"]
    variants = {s: {v.partition("+")[2] for v in sets[s]} for s in SPLITS}
    assert not variants["train"] & variants["test"]  # no test timbre is heard in training, in any accent
    # Stratified: every family of 4+ variants is dealt to both train and test, in the 44 / 8 / 16 split.
    assert [len(VARIANTS[s]) for s in SPLITS] == [44, 8, 16]
    for family, members in VARIANT_FAMILIES.items():
        assert len(members) < 4 or all(set(members) & set(VARIANTS[s]) for s in ("train", "test")), family
    assert "whisper" in VARIANTS["train"] and "whisperf" in VARIANTS["test"]


def test_words_keep_clear_of_the_clip_edges() -> None:
    # Almost no noise (60 dB SNR): the first and last edge_seconds of a spoken clip are near-silent, so a
    # random shift of up to that never cuts a word.
    spec = KeywordSpec(train_per_class=1, val_per_class=1, test_per_class=1, snr_db=(60.0, 60.0))
    arrays = render(spec)
    edge = int(spec.edge_seconds * spec.sample_rate)
    audio, labels = arrays["train_audio"].astype(np.float64), arrays["train_labels"]
    for clip in audio[labels != CLASSES.index("_silence_")]:
        peak = np.abs(clip).max()
        assert np.abs(clip[:edge]).max() < 0.01 * peak and np.abs(clip[-edge:]).max() < 0.01 * peak


@pytest.fixture(scope="module")
def tiny_keywords(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("keywords")
    return str(root), load_keywords(root, TINY, log=lambda *_: None)


def test_generator_is_deterministic_and_cached(tiny_keywords, monkeypatch) -> None:
    root, arrays = tiny_keywords
    again = render(TINY)  # a second, independent synthesis (fresh espeak-ng process)
    assert set(again) == set(arrays)
    for key in arrays:
        np.testing.assert_array_equal(again[key], arrays[key], err_msg=key)
    n = len(CLASSES)
    for split, per_class in TINY.counts().items():
        assert arrays[f"{split}_audio"].shape == (n * per_class, 16000) and arrays[f"{split}_audio"].dtype == np.int16
        assert np.bincount(arrays[f"{split}_labels"], minlength=n).tolist() == [per_class] * n
        assert set(arrays[f"{split}_voices"]) <= set(voices(split))
    # Speech is louder than its own background noise: the loudest 50 ms beats the quietest by > 3x (rms).
    audio, labels = arrays["train_audio"].astype(np.float64), arrays["train_labels"]
    for clip in audio[labels != CLASSES.index("_silence_")]:
        rms = np.sqrt((clip.reshape(20, 800) ** 2).mean(1))
        assert rms.max() > 3 * rms.min()
    # Present in the cache: loaded, not generated again.
    monkeypatch.setattr("data.keywords.render", lambda spec: pytest.fail("regenerated a cached set"))
    cached = load_keywords(root, TINY, log=lambda *_: None)
    np.testing.assert_array_equal(cached["test_audio"], arrays["test_audio"])


def test_keyword_data_module_batches(tiny_keywords) -> None:
    root, arrays = tiny_keywords
    dm = AudioDataModule(root=root, train_per_class=2, val_per_class=1, test_per_class=1, batch_size=8)
    dm.setup()
    assert dm.num_classes == 12 and dm.class_names[-2:] == ["_silence_", "_unknown_"]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 16000) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, torch.from_numpy(arrays["test_audio"][:8]).float() / 32768, rtol=0, atol=0)
    assert set(dm.test_voices).isdisjoint(voices("train"))
    xt, _ = next(iter(dm.train_dataloader()))
    assert xt.shape == (8, 16000)


def test_random_shift_is_a_zero_filled_roll() -> None:
    torch.manual_seed(0)
    waves = torch.randn(6, 50)
    out = random_shift(waves, 5, torch.Generator().manual_seed(1))
    shifts = torch.randint(-5, 6, (6, 1), generator=torch.Generator().manual_seed(1))[:, 0]
    for w, o, s in zip(waves, out, shifts.tolist()):
        ref = torch.zeros(50)
        if s >= 0:
            ref[s:] = w[: 50 - s]
        else:
            ref[:s] = w[-s:]
        torch.testing.assert_close(o, ref, rtol=0, atol=0)


def test_speed_perturbation_scales_frequency_and_duration() -> None:
    # Analytic reference: playing a clip s times faster multiplies every frequency by s and divides every
    # duration by s. A 0.4 s burst of a 1,000 Hz tone in the middle of a 1 s clip at 16 kHz, per clip speed.
    rate, n = 16000, 16000
    t = torch.arange(n) / rate
    burst = (t - 0.5).abs() < 0.2
    waves = (torch.sin(2 * torch.pi * 1000.0 * t) * burst).repeat(4, 1)
    speeds = torch.tensor([0.8, 1.0, 1.25, 1.5])
    out = speed_perturb(waves, speeds)
    assert out.shape == waves.shape
    torch.testing.assert_close(out[1], waves[1], rtol=0, atol=0)  # speed 1: untouched
    for wave, s in zip(out, speeds.tolist()):
        spectrum = torch.fft.rfft(wave).abs()
        assert abs(spectrum.argmax().item() * rate / n - 1000.0 * s) <= 2.0  # 1 Hz bins
        loud = torch.nonzero(wave.abs() > 0.5)[:, 0] / rate  # the burst's extent, in seconds
        assert abs((loud[-1] - loud[0]).item() - 0.4 / s) < 0.002
        assert abs((loud[-1] + loud[0]).item() / 2 - 0.5) < 0.002  # still centred
    # Speeds are rounded to steps of 0.05; each clip gets its own, whatever else is in the batch.
    torch.testing.assert_close(speed_perturb(waves[:1], torch.tensor([1.26])), out[2:3], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"positive.*\[1.0, -1.0, 1.0, 1.0\]"):
        speed_perturb(waves, torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_speed_perturbation_only_in_training(tiny_keywords) -> None:
    root, arrays = tiny_keywords
    kw = dict(root=root, train_per_class=2, val_per_class=1, test_per_class=1, batch_size=24, shift_seconds=0.0)
    plain, fast = AudioDataModule(**kw), AudioDataModule(**kw, speed_range=[1.5, 1.5])
    for dm in (plain, fast):
        dm.setup()
    (x0, y0), (x1, y1) = next(iter(plain.train_dataloader())), next(iter(fast.train_dataloader()))
    assert torch.equal(y0, y1)  # same shuffle
    torch.testing.assert_close(x1, speed_perturb(x0, torch.full((24,), 1.5)), rtol=0, atol=0)
    torch.testing.assert_close(next(iter(fast.val_dataloader()))[0], next(iter(plain.val_dataloader()))[0])
    with pytest.raises(ValueError, match=r"speed_range=\[1.2, 0.9\]"):
        AudioDataModule(speed_range=[1.2, 0.9])


# ----------------------------------------------------------------------------- audio folders


def _tone(freq: float, rate: int, seconds: float) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def test_audio_folder_reads_wav_and_flac_and_resamples(tmp_path) -> None:
    for c, freq in (("high", 880.0), ("low", 220.0)):
        (tmp_path / c).mkdir()
        for i in range(5):
            tone = _tone(freq, 8000, 0.8)
            if i % 2:
                sf.write(tmp_path / c / f"{i}.flac", tone, 8000)
            else:  # stereo float wav whose channel mean is the tone
                sf.write(tmp_path / c / f"{i}.wav", np.stack([tone * 1.5, tone * 0.5], 1), 8000, subtype="FLOAT")
    dm = AudioDataModule(dataset="audio_folder", root=str(tmp_path), batch_size=16, augment=False)
    assert dm.class_names == ["high", "low"] and dm.num_classes == 2
    dm.setup()
    assert sum(len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)) == 10
    full = dm.train_dataset.dataset
    for i, (path, label) in enumerate(full.samples):
        wave, y = full[i]
        assert wave.shape == (16000,) and y == label
        expected = _tone(880.0 if label == 0 else 220.0, 16000, 0.8)  # the same tone sampled at 16 kHz
        tol = 2e-3 if path.endswith(".wav") else 2e-3 + 1 / 32768  # flac is 16-bit
        np.testing.assert_allclose(wave[200:12600].numpy(), expected[200:12600], atol=tol)  # away from the edges
        assert wave[12800:].abs().max() == 0  # 0.8 s padded to 1 s with zeros


def test_unreadable_or_empty_audio_fails_with_its_path(tmp_path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        sf.write(tmp_path / c / "ok.wav", _tone(440.0, 16000, 0.5), 16000)
    bad = tmp_path / "a" / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(RuntimeError, match=f"cannot read audio file {bad}"):
        AudioDataModule(dataset="audio_folder", root=str(tmp_path)).setup()
    bad.unlink()
    empty = tmp_path / "b" / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(ValueError, match=f"empty audio file .*{empty}"):
        AudioDataModule(dataset="audio_folder", root=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AudioDataModule(dataset="audio_folder", root=str(tmp_path / "nope")).num_classes


def test_speech_commands_offline_says_how_to_get_it(tmp_path) -> None:
    dm = AudioDataModule(dataset="speech_commands", root=str(tmp_path), download=False)
    with pytest.raises(RuntimeError, match=r"speech_commands.*not found.*To get it"):
        dm.setup()


def test_bad_data_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="'speech'"):
        AudioDataModule(dataset="speech")
    with pytest.raises(ValueError, match="num_classes=10"):
        AudioDataModule(num_classes=10)
    with pytest.raises(ValueError, match="shift_seconds=1.5"):
        AudioDataModule(shift_seconds=1.5)
