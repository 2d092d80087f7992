"""Whisper in the zoo against transformers' WhisperForConditionalGeneration with the same tiny random weights
(saved with save_pretrained, converted by models/pretrained/whisper.py): logits, every attention map, greedy and
beam tokens of `generate`; the front end against WhisperFeatureExtractor on real recordings (FSDD)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.config import ROOT
from helpers.whisper_tiny import (ALIGNMENT_HEADS, BEGIN_SUPPRESS, EOT, LANGUAGES, NO_TIMESTAMPS, SOT, SUPPRESS,
                                  TASKS, VOCAB, make_tiny_whisper)
from models.attention import attention_maps, fused_attn

FSDD = ROOT.parent / "shared" / "datasets" / "fsdd" / "recordings"
FRAMES = 32  # the tiny model's max_source_positions (16) x the stride-2 convolution


def _build(folder: Path, **kw):
    from transformers import WhisperForConditionalGeneration

    from models.pretrained import convert

    make_tiny_whisper(folder, **kw)
    torch.set_num_threads(1)
    conv = convert(str(folder))
    ref = WhisperForConditionalGeneration.from_pretrained(str(folder), attn_implementation="eager").eval()
    return conv, conv.build(), ref


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """Weights of a trained model's scale (std 0.2): logits and maps."""
    return _build(tmp_path_factory.mktemp("whisper"), multilingual=True)


@pytest.fixture(scope="module", params=[False, True], ids=["english", "multilingual"])
def whisper_decoding(request, tmp_path_factory):
    """Larger weights (std 1): decodings that depend on the input, some ending early, some at the length limit."""
    return _build(tmp_path_factory.mktemp("whisper_decoding"), multilingual=request.param, std=1.0)


def _mel(rows: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, 80, FRAMES, generator=torch.Generator().manual_seed(seed))


def _decoder_ids(rows: int, length: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    tgt = torch.randint(0, EOT, (rows, length), generator=g)
    tgt[:, :4] = torch.tensor([SOT, LANGUAGES["<|en|>"], TASKS["transcribe"], NO_TIMESTAMPS])
    return tgt


@torch.no_grad()
def test_logits_match_whisper_for_conditional_generation(whisper) -> None:
    _, net, ref = whisper
    mel, tgt = _mel(), _decoder_ids(3, 9)
    with fused_attn(True):
        logits = net(mel, tgt)
    expected = ref(input_features=mel, decoder_input_ids=tgt).logits
    diff = (logits - expected).abs().max().item()
    assert diff <= 1e-4, diff


@torch.no_grad()
def test_encoder_decoder_and_cross_attention_maps_equal_eager(whisper) -> None:
    _, net, ref = whisper
    mel, tgt = _mel(), _decoder_ids(3, 7)
    with fused_attn(True):  # the layers recorded take the explicit pass, the others keep the fused kernel
        _, maps = attention_maps(net, mel, tgt)
    out = ref(input_features=mel, decoder_input_ids=tgt, output_attentions=True)
    assert len(maps) == 2 + 2 * 2
    for i in range(2):
        pairs = [(f"encoder.blocks.{i}.attn", out.encoder_attentions[i]),
                 (f"decoder.{i}.self_attn", out.decoder_attentions[i]),
                 (f"decoder.{i}.cross_attn", out.cross_attentions[i])]
        for name, expected in pairs:
            assert maps[name].shape == expected.shape, name
            diff = (maps[name] - expected).abs().max().item()
            assert diff <= 1e-5, (name, diff)


def _strip(ids: torch.Tensor) -> list[list[int]]:
    """generate's rows up to, not including, EOT (it pads ended rows with EOT)."""
    return [row[: row.index(EOT)] if EOT in row else row for row in ids.tolist()]


@torch.no_grad()
def test_greedy_and_beam_tokens_equal_generate(whisper_decoding) -> None:
    conv, net, ref = whisper_decoding
    settings = conv.module
    mel = _mel(8, seed=1)
    multilingual = bool(settings["languages"])
    language = dict(language="en", task="transcribe") if multilingual else {}
    options = {k: settings[k] for k in ("prompt", "suppress_tokens", "begin_suppress_tokens")}
    for beams in (1, 3):
        expected = _strip(ref.generate(mel, max_new_tokens=12, num_beams=beams, **language))
        got = net.transcribe(mel, max_new_tokens=12, beam_size=beams, **options)
        assert got == expected, beams
        if beams == 1:
            assert net.transcribe(mel, max_new_tokens=12, use_cache=False, **options) == got
    lengths = {len(row) for row in expected}
    assert min(lengths) < 12 == max(lengths) or multilingual  # early EOT and the length limit both occur
    firsts = {row[0] for row in got if row}
    assert len(firsts) > 1 and not firsts & set(BEGIN_SUPPRESS)  # the audio decides; begin-suppression holds
    assert not {t for row in got for t in row} & set(SUPPRESS)


@torch.no_grad()
def test_detected_languages_equal_generate_without_a_language(whisper_decoding) -> None:
    """A multilingual model given no language: each recording's own (argmax over the language tokens after
    <|startoftranscript|>), then decoding from its prompt, as transformers' generate does. (It is told the task:
    given none and a generation config without forced_decoder_ids, it leaves the task token out, which
    OpenAI's decoding, and the converter's prompt, never do.)"""
    conv, net, ref = whisper_decoding
    settings = conv.module
    if not settings["languages"]:
        pytest.skip("an English-only model has no language token")
    mel = _mel(8, seed=2)
    found = net.detect_language(mel, settings["languages"].values())
    torch.testing.assert_close(found, ref.detect_language(mel, num_segment_frames=FRAMES), rtol=0, atol=0)
    assert len(set(found.tolist())) == 2  # both languages occur: the prompts differ per row
    options = {k: settings[k] for k in ("prompt", "suppress_tokens", "begin_suppress_tokens")}
    for beams in (1, 3):
        expected = _strip(ref.generate(mel, max_new_tokens=8, num_beams=beams, task="transcribe"))
        got = net.transcribe(mel, max_new_tokens=8, beam_size=beams, detect_language=settings["languages"].values(),
                             **options)
        assert got == expected, beams


@torch.no_grad()
def test_suppression_changes_what_is_decoded(whisper_decoding) -> None:
    """The settings are not idle: without them these weights start with a begin-suppressed or suppressed token."""
    conv, net, _ = whisper_decoding
    free = net.transcribe(_mel(8, seed=1), prompt=conv.module["prompt"], max_new_tokens=4)
    assert {t for row in free for t in row} & set(SUPPRESS + BEGIN_SUPPRESS)


def test_converter_reads_whisper_settings(whisper, whisper_decoding) -> None:
    from models.pretrained.whisper import whisper_prompt

    conv, net, _ = whisper
    s = conv.module
    assert conv.net["_target_"] == "models.whisper.Whisper" and conv.modality == "audio"
    assert s["prompt"] == [SOT, LANGUAGES["<|en|>"], TASKS["transcribe"], NO_TIMESTAMPS]
    assert s["suppress_tokens"] == SUPPRESS and s["begin_suppress_tokens"] == BEGIN_SUPPRESS
    assert s["alignment_heads"] == ALIGNMENT_HEADS and s["no_timestamps_id"] == NO_TIMESTAMPS
    assert s["max_new_tokens"] == 40 - 4 and s["beam_size"] == 1
    assert whisper_prompt(SOT, NO_TIMESTAMPS, s["languages"], s["tasks"], True, "<|de|>", "translate") == [
        SOT, LANGUAGES["<|de|>"], TASKS["translate"], NO_TIMESTAMPS]
    with pytest.raises(ValueError, match="language='<|fr|>'"):
        whisper_prompt(SOT, NO_TIMESTAMPS, s["languages"], s["tasks"], True, "<|fr|>")
    english = whisper_decoding[0].module
    assert english["prompt"] in ([SOT, NO_TIMESTAMPS], s["prompt"])  # the English-only model: no language, task
    tokenizer = conv.load_tokenizer()
    assert tokenizer.decode([5, 6], skip_special_tokens=True) == "t5 t6"
    assert net.task == "transcribe" and net.name == "whisper"


def test_older_generation_configs_give_the_prompt_by_forced_decoder_ids(tmp_path: Path) -> None:
    """Files written before no_timestamps_token_id existed force the prompt's later tokens instead."""
    import json

    from models.pretrained.source import resolve
    from models.pretrained.whisper import decoding_settings

    (tmp_path / "generation_config.json").write_text(json.dumps({
        "decoder_start_token_id": SOT, "forced_decoder_ids": [[2, TASKS["transcribe"]], [1, LANGUAGES["<|de|>"]],
                                                              [3, NO_TIMESTAMPS]]}))
    settings = decoding_settings(resolve(str(tmp_path)), {"max_target_positions": 40})
    assert settings["prompt"] == [SOT, LANGUAGES["<|de|>"], TASKS["transcribe"], NO_TIMESTAMPS]
    assert settings["max_new_tokens"] == 36 and settings["suppress_tokens"] == []


def test_converter_refuses_what_the_zoo_whisper_does_not_express() -> None:
    from models.pretrained.whisper import whisper_kwargs
    from utils.errors import FileFormatError

    config = {"d_model": 48, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 192, "decoder_ffn_dim": 192, "vocab_size": VOCAB,
              "decoder_start_token_id": SOT, "eos_token_id": EOT}
    assert whisper_kwargs(config, "x")["mlp_ratio"] == 4.0
    for key, value, message in (("decoder_attention_heads", 8, "encoder_attention_heads=4 != "),
                                ("decoder_ffn_dim", 96, "encoder_ffn_dim=192 != "),
                                ("scale_embedding", True, "scale_embedding=true"),
                                ("activation_function", "mish", "activation_function='mish'")):
        with pytest.raises(FileFormatError, match=message):
            whisper_kwargs({**config, key: value}, "x")


@torch.no_grad()
def test_key_bias_is_zero_and_changes_nothing(whisper) -> None:
    """Whisper's keys have no bias; the zoo's fused qkv keeps a zero one, and any value there is a no-op
    (a constant per query row, which softmax removes): the reason no core option is needed."""
    _, net, _ = whisper
    mel, tgt = _mel(2), _decoder_ids(2, 6)
    attn = net.decoder[0].cross_attn
    k_bias = attn.qkv.bias[attn.q_size: attn.q_size + attn.kv_size]
    assert k_bias.eq(0).all()
    with fused_attn(False):
        before = net(mel, tgt)
        k_bias.normal_()
        after = net(mel, tgt)
        k_bias.zero_()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_exports_to_onnx_and_matches_onnxruntime(whisper, tmp_path: Path) -> None:
    from utils.export import export_onnx, verify_onnx

    _, net, _ = whisper
    spec = export_onnx(net, tmp_path / "whisper.onnx")
    assert spec.dynamic == {"mel": ["batch"], "tgt_in": ["batch", "tgt_len"]}
    assert verify_onnx(net, tmp_path / "whisper.onnx", spec) <= 1e-4


def test_too_long_input_and_bad_shapes_are_refused(whisper) -> None:
    _, net, _ = whisper
    with pytest.raises(ValueError, match="audio_len=16"):
        net.encode(torch.zeros(1, 80, FRAMES + 2))
    with pytest.raises(ValueError, match=r"\(batch, 80, frames\)"):
        net.encode(torch.zeros(1, 64, FRAMES))
    with pytest.raises(ValueError, match=r"prompt\[1\]=500: expected a token id"):
        net.transcribe(torch.zeros(1, 80, FRAMES), prompt=[SOT, 500])
    with pytest.raises(ValueError, match="prompt: 2 rows for a batch of 3"):
        net.greedy(torch.zeros(3, 80, FRAMES), 4, prompt=[[SOT], [SOT]])


def test_builds_on_the_meta_device() -> None:
    """The house checks a config by building the network on the meta device (utils/validate.py)."""
    from models.whisper import Whisper

    with torch.device("meta"):
        net = Whisper(vocab_size=VOCAB, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2, audio_len=8,
                      max_len=8, bos_id=SOT, eos_id=EOT, pad_id=EOT)
    assert net.head.weight.is_meta and net.head.weight is net.tgt_embed.weight


def _fsdd(names: list[str]) -> list[torch.Tensor]:
    """FSDD recordings (8 kHz) resampled to Whisper's 16 kHz with torchaudio (what a user of the zoo must do)."""
    import soundfile as sf
    import torchaudio.functional as AF

    waves = []
    for name in names:
        data, rate = sf.read(str(FSDD / name), dtype="float32")
        waves.append(AF.resample(torch.from_numpy(data), rate, 16000))
    return waves


@pytest.mark.skipif(not FSDD.is_dir(), reason="the FSDD recordings are not in ../shared/datasets/fsdd")
def test_front_end_equals_whisper_feature_extractor_on_fsdd() -> None:
    from transformers import WhisperFeatureExtractor

    from models.whisper_frontend import WhisperFrontEnd

    names = ["0_george_0.wav", "3_jackson_12.wav", "7_nicolas_30.wav", "9_theo_49.wav", "5_yweweler_7.wav"]
    waves = _fsdd(names)
    extractor = WhisperFeatureExtractor()  # 80 bins, 16 kHz, n_fft 400, hop 160, 30 s
    front = WhisperFrontEnd(n_mels=80)
    for name, wave in zip(names, waves):
        expected = torch.from_numpy(extractor(wave.numpy(), sampling_rate=16000, return_tensors="np")
                                    ["input_features"])
        got = front(wave)
        assert got.shape == expected.shape == (1, 80, 3000), name
        diff = (got - expected).abs().max().item()
        assert diff <= 1e-4, (name, diff)
    # A batch gives each recording's own features (each normalised by its own maximum).
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    torch.testing.assert_close(front(batch)[1], front(waves[1])[0], atol=1e-5, rtol=0)
    # large-v3's 128 bins
    expected = extractor.__class__(feature_size=128)(waves[0].numpy(), sampling_rate=16000, return_tensors="np")
    diff = (WhisperFrontEnd(n_mels=128)(waves[0]) - torch.from_numpy(expected["input_features"])).abs().max().item()
    assert diff <= 1e-4, diff


def test_front_end_pads_and_trims_to_thirty_seconds() -> None:
    from models.whisper_frontend import WhisperFrontEnd

    front = WhisperFrontEnd(n_mels=128)
    long = torch.randn(2, 16000 * 31)
    assert front(long).shape == (2, 128, 3000)
    torch.testing.assert_close(front(long), front(long[:, : 16000 * 30]))
    assert front(torch.randn(800)).shape == (1, 128, 3000)


@pytest.mark.parametrize("samples", [1, 159, 161, 16000, 16000 * 30 - 500, 16000 * 30 + 999])
def test_the_clips_own_frames_are_the_chunks_first_frames_bit_for_bit(samples: int) -> None:
    """`clip=True` computes the STFT of the clip and 800 samples of silence instead of 30 s: its frames are the
    chunk's first ones (bit for bit from 0.1 s up), also when the clip's loudest sound is in its last samples (the maximum that
    clamps every frame) and when it ends within 800 samples of 30 s or beyond."""
    from models.whisper_frontend import HOP_LENGTH, WhisperFrontEnd

    front = WhisperFrontEnd(n_mels=80)
    wave = torch.randn(2, samples, generator=torch.Generator().manual_seed(samples)) * 0.01
    wave[:, -20:] = 0.9  # the loudest frame touches the clip's end
    chunk, clip = front(wave), front(wave, clip=True)
    frames = min(3000, -(-samples // HOP_LENGTH))
    assert clip.shape[-1] >= frames and clip.shape[-1] <= 3000
    if samples >= 1600:
        assert torch.equal(clip[..., :frames], chunk[..., :frames])
    else:  # under 10 frames the mel product (80 x 201 @ 201 x frames) rounds once differently here
        torch.testing.assert_close(clip[..., :frames], chunk[..., :frames], rtol=0, atol=1e-7)
