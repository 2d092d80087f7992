"""Word timestamps (inference/speech_words.py) against independent references: transformers' generate with
return_token_timestamps on a tiny random Whisper (same weights, same tokens), its own token-to-word grouping,
and DTW against every path of small matrices."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.whisper_tiny import ALIGNMENT_HEADS, make_tiny_whisper
from inference import speech_words as sw

FRAMES = 32  # the tiny model's max_source_positions (16) x the stride-2 convolution


def _wav(path: Path, seconds: float, rate: int = 16000, seed: int = 0) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.1) + 0.05 * rng.standard_normal(len(t))
    sf.write(str(path), wave.astype(np.float32), rate, subtype="FLOAT")
    return path


# Random weights that say something: "ended" stops at EOS after a few tokens (an EOS bias), "limit" runs to the
# length limit (no EOS row to end the last token); both with tokens at more than one time.
MODELS = {"ended": dict(std=1.0, eos_bias=4.0, seed=1), "limit": dict(std=1.0, seed=1)}


def _tiny(folder: Path, **kw):
    from transformers import WhisperForConditionalGeneration

    make_tiny_whisper(folder, **kw)
    torch.set_num_threads(1)
    return folder, WhisperForConditionalGeneration.from_pretrained(str(folder), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("whisper") / "tiny", **MODELS["ended"])


@pytest.fixture(scope="module")
def tiny_limit(tmp_path_factory):
    return _tiny(tmp_path_factory.mktemp("whisper") / "limit", **MODELS["limit"])


def _paths(rows: int, cols: int):
    """Every monotone path from (0, 0) to (rows - 1, cols - 1) with steps down-right, down, right."""
    def walk(i, j):
        if (i, j) == (rows - 1, cols - 1):
            yield [(i, j)]
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < rows and j + dj < cols:
                for rest in walk(i + di, j + dj):
                    yield [(i, j)] + rest
    return walk(0, 0)


def test_dtw_finds_the_cheapest_path_of_every_small_matrix_and_breaks_ties_as_transformers() -> None:
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping

    g = np.random.default_rng(0)
    for trial in range(30):
        rows, cols = int(g.integers(1, 5)), int(g.integers(1, 7))
        # integer costs make ties common: the path then depends on the tie rule alone
        cost = g.integers(0, 3, (rows, cols)).astype(np.float64) if trial % 2 else g.standard_normal((rows, cols))
        r, c = sw.dtw(cost)
        assert (r[0], c[0]) == (0, 0) and (r[-1], c[-1]) == (rows - 1, cols - 1)
        steps = set(zip(np.diff(r).tolist(), np.diff(c).tolist()))
        assert steps <= {(1, 1), (1, 0), (0, 1)}, steps
        if trial % 2 == 0:  # no ties: the cheapest path (with ties Whisper's rule can miss it, below)
            best = min(sum(cost[i, j] for i, j in path) for path in _paths(rows, cols))
            assert math.isclose(cost[r, c].sum(), best, rel_tol=1e-6, abs_tol=1e-6), (trial, cost)
        expected = _dynamic_time_warping(cost)
        np.testing.assert_array_equal(r, expected[0])
        np.testing.assert_array_equal(c, expected[1])
    # Whisper's tie rule (diagonal and down equally cheap -> right, even when right costs more) can miss the
    # cheapest path when costs tie; kept, so the paths are theirs (float attention weights do not tie)
    tied = np.array([[1.0, 2, 2, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 2, 2]])
    r, c = sw.dtw(tied)
    best = min(sum(tied[i, j] for i, j in path) for path in _paths(3, 5))
    assert (tied[r, c].sum(), best) == (6.0, 4.0)
    # a known case: two tokens over four frames, the first loud in frames 0-1, the second in 2-3
    r, c = sw.dtw(-np.array([[1.0, 1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, 1.0]]))
    assert list(zip(r.tolist(), c.tolist())) == [(0, 0), (0, 1), (1, 2), (1, 3)]


def test_median_filter_equals_transformers() -> None:
    from transformers.models.whisper.generation_whisper import _median_filter

    x = torch.randn(2, 5, 23, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(sw.median_filter(x, 7), _median_filter(x, 7), rtol=0, atol=0)
    assert sw.median_filter(x[..., :3], 7) is not None and sw.median_filter(x[..., :3], 7).shape == (2, 5, 3)


class _Attributes(dict):
    """generate's returned dict, read by attribute as _extract_token_timestamps reads generate's inner output."""

    __getattr__ = dict.__getitem__


def _generate_with_timestamps(ref, mel: torch.Tensor, covered_frames: int, max_new: int):
    """transformers' generate given the attention mask of the audio's frames: (output, token_timestamps)."""
    mask = torch.zeros(1, mel.shape[-1], dtype=torch.long)
    mask[:, :covered_frames] = 1
    with torch.no_grad():
        out = ref.generate(mel, attention_mask=mask, max_new_tokens=max_new, num_beams=1,
                           return_token_timestamps=True, return_dict_in_generate=True)
    return out, mask


@pytest.mark.parametrize("model,seconds,seed", [("ended", 0.3, 1), ("limit", 0.3, 0)])
def test_token_times_equal_transformers_generate(request, tmp_path: Path, model: str, seconds: float,
                                                 seed: int) -> None:
    """The zoo's rows (the queries that produced each token) and transformers' rows (the queries each generated
    token was fed to: one row later, the first token's query left out) through the same steps: generate's
    return_token_timestamps gives the second, its _extract_token_timestamps with one input id fewer the first."""
    from inference.inputs import read
    from inference.load import load

    folder, ref = request.getfixturevalue("tiny" if model == "ended" else "tiny_limit")
    predictor = load(str(folder))
    wave = read(predictor, str(_wav(tmp_path / "speech.wav", seconds, seed=seed)))
    p = predictor.predict(wave, words=True)
    prompt = predictor.generation["prompt"]
    P, n = len(prompt), len(p.ids)
    assert n >= 3, "too few tokens for a test of the alignment"
    frames = math.ceil(wave.shape[-1] / 160)
    assert p.covered == frames // 2 < FRAMES // 2  # the columns are cut to the audio
    mel = predictor.net.features(wave)[..., :FRAMES]
    out, _ = _generate_with_timestamps(ref, mel, frames, 40 - P)
    generated = out["sequences"][0, P:].tolist()
    ended = generated[-1] == predictor.net.eos_id
    assert generated[: n] == p.ids and ended == (n < 40 - P)
    heads = [tuple(h) for h in ALIGNMENT_HEADS]
    assert sw.alignment_heads(predictor.net, predictor.generation["alignment_heads"]) == heads
    # 1. transformers' rows: the recorded cross-attention from the first generated token's query on
    rows = torch.stack([p.maps[f"decoder.{layer}.cross_attn"][0, h, P:, : p.covered] for layer, h in heads])
    theirs = out["token_timestamps"][0, P:].numpy()
    ours = sw.row_positions(rows) * 0.02
    np.testing.assert_allclose(ours, theirs[: len(ours)], rtol=0, atol=1e-6)
    assert len(set(ours.tolist())) > 1, "every token at one time: a weak test"
    # 2. the zoo's rows (one earlier: the query that produced each token), by transformers' own function
    ref.generation_config.num_frames = None
    shifted = ref._extract_token_timestamps(_Attributes(out), ref.generation_config.alignment_heads,
                                            num_frames=frames, num_input_ids=P - 1)[0]
    np.testing.assert_allclose(p.token_starts, shifted[P - 1: P - 1 + n].numpy(), rtol=0, atol=1e-6)
    assert p.token_starts[0] == 0.0  # DTW starts at the first cell: the first token at 0 s, as Whisper's
    # words: the tiny tokenizer's words are its tokens ("t5 t6 ..."), each from its start to the next one's
    text = [t for t in p.ids if t < predictor.net.eos_id]
    assert [w.tokens for w in p.words] == [(t,) for t in text]
    ends = p.token_starts[1:] + ([shifted[P - 1 + n].item()] if ended else [p.covered * 0.02])
    for w, start, end in zip(p.words, p.token_starts, ends):
        assert (w.start, w.end) == (round(start, 2), round(end, 2))


def _byte_level(vocab: list[str]):
    """A byte-level BPE tokenizer (Whisper's kind: 'Ġ' a space, multi-byte characters over several tokens)."""
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(vocab)}, []))
    tok.decoder = decoders.ByteLevel()
    return tok


class _HFShim:
    """What transformers' word grouping asks of a WhisperTokenizer, over the same `tokenizers` tokenizer."""

    def __init__(self, tok, eos: int) -> None:
        self.tok, self.eos_token_id, self.language = tok, eos, "english"

    def decode(self, ids, decode_with_timestamps=True):
        return self.tok.decode(list(ids), skip_special_tokens=False)


def test_tokens_are_grouped_into_words_as_transformers_groups_them() -> None:
    from transformers.models.whisper.tokenization_whisper import _combine_tokens_into_words

    vocab = ["ĠSeven", ".", "Ġ\"", "Hel", "lo", ",", "Ġworld", "Ġcaf", "Ã", "©", "!", "Ġ(", "Ġyes", ")", "Ġ-",
             "Ġ42", "'s", "?", "Ġ", "ok"]
    tok = _byte_level(vocab)
    eos = len(vocab)
    for ids in ([0, 1], [2, 3, 4, 5, 6, 1], [7, 8, 9, 10, 11, 12, 13, 1], [14, 15, 16, 17, 18, 19],
                [3, 4, 0, 5, 5, 1, 6], [8, 9, 0]):
        words, groups, _ = _combine_tokens_into_words(_HFShim(tok, eos), list(ids))
        pieces = sw.split_words(sw.token_pieces(tok, ids))
        merged = sw.merge_punctuation([[text, g, 0.0, 0.0] for text, g in pieces])
        assert [m[0] for m in merged] == words and [m[1] for m in merged] == groups, (ids, merged, words)
    assert sw.token_pieces(tok, [7, 8, 9]) == [(" caf", [7]), ("é", [8, 9])]  # é: two byte tokens, one piece


def test_word_times_of_merged_punctuation_are_the_words() -> None:
    """A word keeps its own start and end when punctuation joins it (OpenAI's merge_punctuations)."""
    tok = _byte_level(["ĠSeven", ".", "Ġeight", ","])
    timed = [[t, g, float(k), float(k + 1)] for k, (t, g) in enumerate(sw.split_words(sw.token_pieces(tok, [0, 1,
                                                                                                     2, 3])))]
    assert sw.merge_punctuation(timed) == [[" Seven.", [0, 1], 0.0, 1.0], [" eight,", [2, 3], 2.0, 3.0]]
    assert sw.word_lines([sw.Word(text=" Seven.", start=0.0, end=0.42, tokens=(0, 1))]) == ["word 0.00 0.42 Seven."]


def test_a_special_token_among_the_text_is_aligned_but_is_no_word(tmp_path: Path) -> None:
    """A token at or after EOS (a timestamp) keeps its row in the DTW; the words around it take their own
    tokens' rows."""
    from tokenizers import Tokenizer

    from helpers.whisper_tiny import EOT, write_tokenizer

    write_tokenizer(tmp_path / "tokenizer.json")
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ids, prompt = [5, 112, 6], 2
    # rows: the prompt's 2, then one per token and EOS; each token loud at its own 4 positions
    maps = torch.full((1, 1, prompt + len(ids), 16), 0.01)
    for row in range(len(ids) + 1):
        maps[0, 0, prompt - 1 + row, 4 * row: 4 * row + 4] = 1.0
    words, starts = sw.word_timestamps({"decoder.0.cross_attn": maps}, ids=ids, prompt_length=prompt, ended=True,
                                       heads=[(0, 0)], positions=16, seconds_per_position=0.02, tokenizer=tok,
                                       eos_id=EOT, width=1)
    assert starts == pytest.approx([0.0, 0.08, 0.16])
    assert [(w.text, w.start, w.end, w.tokens) for w in words] == [("t5", 0.0, 0.08, (5,)), (" t6", 0.16, 0.24, (6,))]


def test_default_alignment_heads_are_the_second_half_of_the_decoder_and_bad_ones_are_named(tiny) -> None:
    from inference.load import load
    from utils.errors import UserError

    predictor = load(str(tiny[0]))
    net = predictor.net  # 2 decoder layers of 4 heads
    assert sw.alignment_heads(net, None) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert sw.alignment_heads(net, []) == sw.alignment_heads(net, None)
    with pytest.raises(UserError, match=r"alignment_heads \[\[2, 0\]\] \(generation_config.json\): this model's "
                                        r"decoder has 2 layers of 4 heads"):
        sw.alignment_heads(net, [[1, 0], [2, 0]])
    assert sw.covered_positions(4800, 160, 16) == 15 and sw.covered_positions(10**6, 160, 16) == 16
    assert sw.covered_positions(1, 160, 16) == 1


FSDD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fsdd" / "recordings"


@pytest.mark.skipif(not FSDD.is_dir(), reason="the FSDD recordings are not in ../shared/datasets/fsdd")
def test_make_whisper_picture_draws_a_recording_with_its_words(tiny, tmp_path: Path, capsys) -> None:
    """docs/make_whisper_picture.py on the tiny model (the lead runs it on tiny.en): the picture and the lines
    predict.py --words prints for the same recording."""
    import importlib.util

    import predict

    spec = importlib.util.spec_from_file_location("make_whisper_picture",
                                                  Path(__file__).resolve().parents[1] / "docs" / "make_whisper_picture.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "words.png"
    assert script.main([str(tiny[0]), "--recording", "7_jackson_12.wav", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert out.stat().st_size > 10_000 and lines[0] == "note: resampled from 8000 Hz to 16000 Hz"
    assert predict.main([str(tiny[0]), str(FSDD / "7_jackson_12.wav"), "--words", "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == lines[1:-1]
    assert script.main([str(tiny[0]), "--recording", "no_such.wav", "--out", str(out)]) == 2
