"""Fine-tuning Whisper (experiment=finetune_whisper, data=transcripts, training/speech.py) on a tiny random HF
Whisper (tests/helpers/whisper_tiny.py): the loss against transformers' WhisperForConditionalGeneration given the
same labels, the WER normalisation, a run end to end (train, evaluate, predict, export, resume), and audio
longer than 30 s to predict.py against transformers' generate window by window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers.cli import run
from helpers.whisper_tiny import EOT, make_tiny_whisper, write_pairs

FRAMES = 32  # the tiny model's max_source_positions (16) x the stride-2 convolution


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny", std=0.2)


def _module(folder: Path, **kw):
    from models.pretrained import convert
    from training.speech import WhisperModule

    conv = convert(str(folder))
    settings = {k: v for k, v in conv.module.items()}
    return WhisperModule(net=conv.build(), optimizer=torch.optim.AdamW, **settings, **kw), conv


def test_the_loss_is_transformers_loss_with_the_prompt_unscored(tiny) -> None:
    """Labels built by hand as transformers takes them: -100 where the decoder reads the prompt, the transcript
    tokens and <|endoftext|> scored, -100 after; decoder_input_ids the sequence shifted (padded with EOT)."""
    from transformers import WhisperForConditionalGeneration

    from data.transcripts import IGNORE

    module, conv = _module(tiny)
    prompt = conv.module["prompt"]
    texts = [[12, 40, 7], [55], [9, 9, 30, 31, 80]]
    text = torch.full((3, 5), IGNORE)
    for row, ids in enumerate(texts):
        text[row, : len(ids)] = torch.tensor(ids)
    mel = torch.randn(3, 80, FRAMES, generator=torch.Generator().manual_seed(0))
    length = len(prompt) + 5
    inputs, labels = torch.full((3, length), EOT), torch.full((3, length), -100)
    for row, ids in enumerate(texts):
        full = prompt + ids + [EOT]
        inputs[row, : len(full) - 1] = torch.tensor(full[:-1])
        labels[row, len(prompt) - 1: len(full) - 1] = torch.tensor(ids + [EOT])
    ref = WhisperForConditionalGeneration.from_pretrained(str(tiny)).eval()
    with torch.no_grad():
        expected = ref(input_features=mel, decoder_input_ids=inputs, labels=labels).loss
        loss, _, ours = module.loss(mel, text)
    assert ours.ne(IGNORE).sum() == sum(len(t) + 1 for t in texts) == labels.ne(-100).sum()
    assert abs(loss.item() - expected.item()) <= 1e-5, (loss.item(), expected.item())


def test_a_frozen_encoder_takes_no_gradient_and_the_decoder_does(tiny) -> None:
    module, _ = _module(tiny, freeze_encoder=True)
    text = torch.tensor([[12, 40]])
    loss, _, _ = module.loss(torch.randn(1, 80, FRAMES), text)
    loss.backward()
    assert all(p.grad is None for p in module.net.encoder.parameters()) and module.net.conv1.weight.grad is None
    assert module.net.decoder[0].self_attn.qkv.weight.grad.abs().sum() > 0


def test_a_frozen_encoders_outputs_are_kept_and_reused_up_to_the_limit(tiny) -> None:
    """encoder_cache_mb: the first pass over an utterance runs the encoder (no dropout in the frozen part), later
    ones reuse its output (equal to running it again), only as many utterances as fit the limit are kept, and a
    batch mixing kept and new utterances encodes the new ones only."""
    module, _ = _module(tiny, freeze_encoder=True)
    module.net.eval()
    one = module.net.audio_len * module.net.dim * 4  # an utterance's memory: positions x width, float32
    module.encoder_cache_bytes = int(2.5 * one)  # room for two utterances
    rows = []
    module.net.encoder.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(3, 16000, generator=g) * 0.1
    batch = {"wave": waves, "index": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        expected = module.net.encode(module.features(waves))[0]  # eval mode: no dropout
        module.net.train()
        module.net.drop.p = 0.5  # the input dropout (shared with the decoder): off in a frozen encoder only
        first = module.memory(batch, "train")
        assert module.net.drop.training
        again = module.memory(batch, "train")
        mixed = module.memory({"wave": waves[[2, 0]], "index": torch.tensor([2, 0])}, "train")
        val = module.memory({"wave": waves[:1], "index": torch.tensor([0])}, "val")  # another split's index 0
    assert rows == [3, 3, 1, 1, 1]  # by hand; all three; then the one past the limit each time; val's own
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)
    assert torch.equal(again[:2], first[:2]) and torch.equal(mixed[1], first[0])  # kept: the same tensors
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)  # utterance 2 encoded again, alone
    torch.testing.assert_close(mixed, first[[2, 0]], atol=1e-6, rtol=0)
    torch.testing.assert_close(val, expected[:1], atol=1e-6, rtol=0)
    assert sorted(module._memories) == [("train", 0), ("train", 1)]
    unfrozen, _ = _module(tiny, freeze_encoder=False)  # an encoder that learns: nothing kept
    unfrozen.memory(batch, "train")
    assert unfrozen.encoder_cache_bytes == 0 and not unfrozen._memories


def test_kept_encoder_outputs_train_as_running_the_encoder_every_epoch(tiny, tmp_path: Path) -> None:
    """Two epochs with the frozen encoder's outputs kept (the default) and with encoder_cache_mb=0: the same losses
    and scores (the second epoch reads the kept outputs)."""
    pairs = write_pairs(tmp_path / "pairs")
    got = {}
    for cache in ("2048", "0"):
        out = tmp_path / f"run_{cache}"
        run("train.py", "experiment=finetune_whisper", f"pretrained={tiny}", f"data.root={pairs}", "threads=1",
            "trainer.max_epochs=2", "model.optimizer.lr=3e-3", "data.batch_size=4", "test=false",
            f"model.encoder_cache_mb={cache}", f"hydra.run.dir={out}")
        got[cache] = _metrics(out)
    for key in ("train/loss", "val/loss", "val/wer", "val/acc"):
        assert got["2048"][key] == pytest.approx(got["0"][key], abs=1e-5), key


def test_the_wer_normalisation_and_a_scored_corpus() -> None:
    from training.wer import normalize_transcript, word_error_rate

    assert normalize_transcript("Seven.") == normalize_transcript("7") == normalize_transcript(" seven ") == "seven"
    assert normalize_transcript("Twenty-one, O'Brien's 'quoted' CAFÉ!") == "twenty one o'brien's quoted café"
    assert normalize_transcript("17 of 7") == "17 of seven" and normalize_transcript("...") == ""
    # "zero one" heard "Zero, 1." (2 hits); "two three" heard "4" (1 substitution, 1 deletion): 2 edits / 4 words;
    # "two three" heard "3" (1 deletion): 1 edit / 4 words
    assert word_error_rate(["zero one", "two three"], ["Zero, 1.", "4"]) == (50.0, 4)
    assert word_error_rate(["zero one", "two three"], ["Zero, 1.", "3"]) == (25.0, 4)


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def test_fine_tune_evaluate_predict_export_and_resume(tiny, tmp_path: Path) -> None:
    from inference.inputs import read
    from inference.load import load
    from models.pretrained import convert
    from utils.checkpoint import load_checkpoint

    pairs = write_pairs(tmp_path / "pairs")
    trained = tmp_path / "run"
    common = ["threads=1", "data.batch_size=4"]
    run("train.py", "experiment=finetune_whisper", f"pretrained={tiny}", f"data.root={pairs}", "trainer.max_epochs=2",
        "model.optimizer.lr=3e-3", f"hydra.run.dir={trained}", *common)
    metrics = _metrics(trained)
    assert metrics["test/utterances"] >= 1 and 0 <= metrics["test/wer"] and metrics["val/words"] >= 1
    ckpt = load_checkpoint(trained / "checkpoints" / "last.ckpt")
    conv = convert(str(tiny))
    source = conv.state
    # the encoder is frozen (the experiment's choice), the decoder learned
    weights = ckpt["state_dict"]
    assert torch.equal(weights["net.encoder.blocks.0.attn.qkv.weight"], source["encoder.blocks.0.attn.qkv.weight"])
    assert not torch.equal(weights["net.decoder.0.self_attn.qkv.weight"], source["decoder.0.self_attn.qkv.weight"])
    assert (trained / "tokenizer.json").read_text() == conv.tokenizer  # the source's, also in every checkpoint
    assert ckpt["TranscriptsDataModule"]["tokenizer"] == conv.tokenizer

    # evaluate.py: the same test scores from the checkpoint alone; save_attention=N draws the first N test
    # recordings (cross-attention picture and page), each line the transcript beside the reference
    done = run("evaluate.py", f"ckpt_path={trained}", f"hydra.run.dir={tmp_path / 'ev'}", "threads=1",
               "save_attention=2")
    for key in ("test/loss", "test/wer", "test/words"):
        assert _metrics(tmp_path / "ev")[key] == pytest.approx(metrics[key], abs=1e-5), key
    from data.transcripts import TranscriptsDataModule

    first = TranscriptsDataModule(root=str(pairs)).splits["test"][0]
    drawn = load(str(trained))
    said = drawn.predict(read(drawn, str(first.audio))).text
    assert f"{first.audio.name} -> {said} (reference: {first.text})" in done.stdout
    pictures = sorted(x.name for x in (tmp_path / "ev" / "attention").iterdir())
    assert "test000.html" in pictures and f"test000_{first.audio.stem}_wav_cross_attention.png" in pictures
    words = drawn.predict(read(drawn, str(first.audio)), words=True).words  # the page's words: predict.py --words'
    page = (tmp_path / "ev" / "attention" / "test000.html").read_text(encoding="utf-8")
    assert words and all(f'"start":{w.start}' in page.replace(" ", "") for w in words)

    # predict.py on the run: the fine-tuned network's greedy transcript of the 16 kHz audio (resampled)
    wav = pairs / "u03.wav"
    predictor = load(str(trained))
    got = predictor.predict(read(predictor, str(wav)))
    wave16 = read(predictor, str(wav))
    mel = predictor.net.features(wave16)[..., :FRAMES]
    module = predictor.module
    expected = module.net.transcribe(mel, prompt=module.prompt, max_new_tokens=40 - len(module.prompt),
                                     suppress_tokens=module.suppress_tokens,
                                     begin_suppress_tokens=module.begin_suppress_tokens)[0]
    assert got.ids == expected
    out = run("predict.py", str(trained), str(wav), "--threads", "1")
    assert out.stdout.strip() == got.text and "resampled from 8000 Hz to 16000 Hz" in out.stderr

    # export.py: safetensors and ONNX (verified against PyTorch by export.py itself)
    done = run("export.py", f"ckpt_path={trained}", f"out={tmp_path / 'exported'}", "threads=1")
    assert (tmp_path / "exported" / "whisper.onnx").is_file(), done.stdout
    assert (tmp_path / "exported" / "whisper.safetensors").is_file()

    # resume in place: one more epoch from last.ckpt
    run("train.py", "experiment=finetune_whisper", f"pretrained={tiny}", f"data.root={pairs}", "trainer.max_epochs=3",
        "model.optimizer.lr=3e-3", f"ckpt_path={trained}", f"hydra.run.dir={trained}", *common)
    assert load_checkpoint(trained / "checkpoints" / "last.ckpt")["epoch"] == 2


def test_train_val_test_sub_folders_are_the_splits_and_other_rates_are_resampled(tiny, tmp_path: Path) -> None:
    from data.transcripts import TranscriptsDataModule
    from models.pretrained import convert

    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write_pairs(tmp_path / "root" / split, n=n, rate=44100, seed=n)
    stereo = np.stack([np.ones(960, np.float32) * 0.5, np.zeros(960, np.float32)], 1)  # 10 ms at 96 kHz
    sf.write(str(tmp_path / "root" / "test" / "stereo.wav"), stereo, 96000)
    (tmp_path / "root" / "test" / "stereo.txt").write_text("t5\n")
    dm = TranscriptsDataModule(root=str(tmp_path / "root"))
    dm.load_state_dict({"tokenizer": convert(str(tiny)).tokenizer})
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 5, "val": 2, "test": 4}
    assert dm.splits["test"][0].audio.name == "stereo.wav"  # sorted by path
    wave, ids, _ = dm._data["test"][0]
    assert ids == [5] and wave.shape == (160,)  # 10 ms at 16 kHz
    assert abs(wave[40:120].mean().item() - 0.25) < 0.01  # the mean of the channels (away from the edges)
    batch = next(iter(dm.val_dataloader()))
    assert batch["wave"].shape[0] == 2 and batch["text"].shape[0] == 2


def _long_wav(path: Path, rate: int = 16000) -> Path:
    """65 s: noise (0-30 s), a 2 kHz tone (30-60 s), a 440 Hz tone (60-65 s): windows that the tiny model, which
    hears the first 0.32 s of each, transcribes differently."""
    t = np.arange(30 * rate) / rate
    noise = 0.3 * np.random.default_rng(0).standard_normal(len(t))
    wave = np.concatenate([noise, 0.3 * np.sin(2 * np.pi * 2000 * t), 0.3 * np.sin(2 * np.pi * 440 * t[: 5 * rate])])
    sf.write(str(path), wave.astype(np.float32), rate, subtype="FLOAT")
    return path


def test_audio_longer_than_30_s_is_transcribed_in_consecutive_windows(tmp_path: Path, capsys) -> None:
    """65 s: windows 0-30, 30-60, 60-65 s, each decoded by transformers' generate on the zoo front end's features
    of that window; predict.py prints their texts joined, and says how many windows."""
    from transformers import WhisperForConditionalGeneration

    import predict
    from inference.inputs import read
    from inference.load import load

    folder = make_tiny_whisper(tmp_path / "tiny", std=1.0)
    ref = WhisperForConditionalGeneration.from_pretrained(str(folder)).eval()
    wav = _long_wav(tmp_path / "long.wav")
    predictor = load(str(folder))
    wave = read(predictor, str(wav))
    prompt, texts = predictor.generation["prompt"], []
    for start in (0, 30, 60):
        mel = predictor.net.features(wave[:, start * 16000: (start + 30) * 16000])[..., :FRAMES]
        with torch.no_grad():
            new = ref.generate(mel, max_new_tokens=40 - len(prompt), num_beams=1)[0].tolist()
        new = new[: new.index(EOT)] if EOT in new else new
        texts.append(predictor.tokenizer.decode(new, skip_special_tokens=True).strip())
    assert len(set(texts)) > 1, texts  # the windows are told apart: a weak test otherwise
    capsys.readouterr()
    assert predict.main([str(folder), str(wav), "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == " ".join(t for t in texts if t)
    assert "65 s long: transcribed in 3 windows of 30 s, one after another" in out.err


def test_word_timestamps_of_long_audio_are_each_windows_moved_by_its_start(tmp_path: Path) -> None:
    """--words on 65 s: the words of window i are that window's own words (predicted alone) plus i * 30 s."""
    from inference.inputs import read
    from inference.load import load

    predictor = load(str(make_tiny_whisper(tmp_path / "tiny", std=1.0)))
    wave = read(predictor, str(_long_wav(tmp_path / "long.wav")))
    whole = predictor.predict(wave, words=True).words
    expected = []
    for start in (0, 30, 60):
        alone = predictor.predict(wave[:, start * 16000: (start + 30) * 16000], words=True).words
        expected += [(w.text, w.start + start, w.end + start) for w in alone]
    assert len(expected) > 0
    assert [w.text for w in whole] == [e[0] for e in expected]
    assert [t for w in whole for t in (w.start, w.end)] == pytest.approx([t for e in expected for t in e[1:]])
    assert max(w.end for w in whole) > 30  # words from the later windows are there, past 30 s
