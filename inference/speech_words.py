"""Word timestamps of a transcription: Whisper's cross-attention aligned to the audio by dynamic time warping.

    p = predictor.predict(wave, words=True)      # inference/predictor.py records the cross-attention
    p.words                                      # [Word(text=" seven", start=0.0, end=0.42, tokens=(...)), ...]

The maps are the ones the shared core recorded in the teacher-forced pass over prompt + tokens + EOS
(inference/predictor.py `_transcribe`); nothing here runs the model. Steps (docs/whisper_words.md):

1. the alignment heads' cross-attention (the checkpoint's `alignment_heads`, else every head of the second half
   of the decoder layers, OpenAI's default), the columns cut to the audio positions the input covers;
2. the rows: the query that produced each generated token (the last prompt token's produced the first token,
   the last text token's produced EOS), as OpenAI's `find_alignment` takes them;
3. per head, each column normalised over those rows (mean 0, std 1), a median filter of width 7 along time,
   the mean over heads; DTW on the negative matrix; a row's time is where the path first reaches it;
4. a token starts at its row's time and ends where the next one starts; tokens merged into words as Whisper's
   tokenizer splits them (a piece with a leading space or a punctuation mark starts a word) and its
   `merge_punctuations` attaches punctuation.

Step 3 is transformers' `_extract_token_timestamps` (tests/test_whisper_words.py: equal to generate's
`return_token_timestamps` on the same rows)."""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from utils.errors import UserError

MEDIAN_WIDTH = 7  # Whisper's medfilt_width (transformers' config.median_filter_width)
PREPENDED = "\"'“¡¿([{-"  # prepend_punctuations (OpenAI's, and transformers' ¡): joined to the word after
APPENDED = "\"'.。,，!！?？:：”)]}、"  # append_punctuations: joined to the word before
NO_SPACES = ("<|zh|>", "<|ja|>", "<|th|>", "<|lo|>", "<|my|>", "<|yue|>")  # languages split per character group


@dataclass(frozen=True, kw_only=True)
class Word:
    """One word of the transcript: its text as decoded (a leading space kept), start and end in seconds, and
    the token ids it is made of."""

    text: str
    start: float
    end: float
    tokens: tuple[int, ...]


def alignment_heads(net: torch.nn.Module, given: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """[(decoder layer, head)] whose cross-attention follows the audio: the checkpoint's own, checked against
    the network's size; without them every head of the second half of the decoder layers (OpenAI's default)."""
    depth = len(net.decoder)
    heads = int(net.decoder[0].cross_attn.num_heads)
    if not given:
        return [(layer, h) for layer in range(depth // 2, depth) for h in range(heads)]
    pairs = [(int(a), int(b)) for a, b in given]
    bad = [pair for pair in pairs if not (0 <= pair[0] < depth and 0 <= pair[1] < heads)]
    if bad:
        raise UserError(f"alignment_heads {[list(b) for b in bad]} (generation_config.json): this model's decoder "
                        f"has {depth} layers of {heads} heads; expected [layer, head] pairs within those")
    return pairs


def median_filter(x: Tensor, width: int = MEDIAN_WIDTH) -> Tensor:
    """Median over a sliding window of `width` (odd) along the last axis, edges reflected (Whisper's; a row
    shorter than half the window is returned as it is, as transformers does)."""
    if width <= 0 or width % 2 != 1:
        raise ValueError(f"width={width}: expected an odd number >= 1")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    rows = x.reshape(1, -1, x.shape[-1])  # reflect-padding takes 3-D input: every leading axis as rows
    padded = torch.nn.functional.pad(rows, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).sort()[0][..., pad].reshape(x.shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through a (rows, columns) cost matrix from its first cell to its last, steps
    down-right, down or right: (row index, column index) of each cell on it, in order. Ties are broken as
    transformers' and OpenAI's loops break them (diagonal, then down, else right), with the same float32
    accumulation; the cells of one anti-diagonal depend only on the two before it, so each is one numpy step."""
    rows, cols = cost.shape
    acc = np.full((rows + 1, cols + 1), np.inf, dtype=np.float32)
    trace = np.full((rows + 1, cols + 1), -1, dtype=np.int8)
    acc[0, 0] = 0
    for d in range(2, rows + cols + 1):
        i = np.arange(max(1, d - cols), min(rows, d - 1) + 1)
        j = d - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2)).astype(np.int8)
        acc[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = rows, cols, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows_on, cols_on = np.array(path[::-1]).T
    return rows_on, cols_on


def row_positions(weights: Tensor, width: int = MEDIAN_WIDTH) -> np.ndarray:
    """(heads, rows, positions) cross-attention -> the audio position where the DTW path first reaches each row.
    Per head each column is normalised over the rows, then median-filtered along time; the mean over heads is
    the similarity the path maximises (DTW on its negative). The first row is reached at position 0."""
    w = weights.double()
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    w = (w - mean) / std
    matrix = median_filter(w, width).mean(0)
    rows_on, cols_on = dtw(-matrix.numpy())
    jumps = np.diff(rows_on, prepend=-1).astype(bool)
    return cols_on[jumps]


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The text each token adds to the transcript (its leading space included), tokens grouped until they make
    whole characters (a byte-level BPE token can hold half of one): decoded prefixes, so a tokenizer whose
    decoder joins tokens with spaces gives the spaces too."""
    pieces: list[tuple[str, list[int]]] = []
    done, group = "", []
    for k, token in enumerate(ids):
        group.append(int(token))
        text = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=False)
        if text.endswith("\ufffd") and k + 1 < len(ids):  # half a character: wait for the rest of it
            continue
        pieces.append((text[len(done):], group))
        done, group = text, []
    return pieces


def split_words(pieces: list[tuple[str, list[int]]], spaces: bool = True) -> list[tuple[str, list[int]]]:
    """Whisper's split_tokens_on_spaces: a piece that starts with a space or is a punctuation mark starts a
    word, the others join the word before. Without spaces (Chinese, Japanese, Thai, ...) each piece is a word."""
    words: list[tuple[str, list[int]]] = []
    for text, ids in pieces:
        starts = not spaces or not words or text.startswith(" ") or text.strip() in string.punctuation
        if starts:
            words.append((text, list(ids)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + list(ids))
    return words


def merge_punctuation(words: list[list[Any]]) -> list[list[Any]]:
    """OpenAI's merge_punctuations on [text, ids, start, end] entries: an opening mark preceded by a space joins
    the word after it, a closing mark joins the word before it (unless that ends in a space); the word kept
    keeps its own times."""
    j = len(words) - 1
    for i in range(len(words) - 2, -1, -1):
        before, after = words[i], words[j]
        if before[0].startswith(" ") and before[0].strip() in PREPENDED:
            after[0], after[1] = before[0] + after[0], before[1] + after[1]
            before[0], before[1] = "", []
        else:
            j = i
    i = 0
    for j in range(1, len(words)):
        before, after = words[i], words[j]
        if not before[0].endswith(" ") and after[0] in APPENDED:
            before[0], before[1] = before[0] + after[0], before[1] + after[1]
            after[0], after[1] = "", []
        else:
            i = j
    return [w for w in words if w[0]]


def covered_positions(samples: int, hop: int, keys: int) -> int:
    """Audio positions (2 log-mel frames each) the input covers: ceil(samples / hop) frames, halved as
    transformers counts them from the feature extractor's attention mask; at least 1, at most the keys."""
    return max(1, min(keys, math.ceil(samples / hop) // 2))


def word_timestamps(
    cross: dict[str, Tensor],
    *,
    ids: Sequence[int],
    prompt_length: int,
    ended: bool,
    heads: Sequence[tuple[int, int]],
    positions: int,
    seconds_per_position: float,
    tokenizer: Any,
    eos_id: int,
    spaces: bool = True,
    width: int = MEDIAN_WIDTH,
) -> tuple[list[Word], list[float]]:
    """(words, each generated token's start in seconds) of one transcription.

    cross: {"decoder.<i>.cross_attn": (1, heads, rows, keys)} of the teacher-forced pass over prompt + ids
    (+ EOS when `ended`, the last input not fed); ids: the generated tokens (EOS excluded). Tokens at or after
    `eos_id` (Whisper's special tokens) are aligned but are not words."""
    if not ids:
        return [], []
    first = prompt_length - 1  # the query that produced the first generated token
    rows = len(ids) + int(ended)  # the queries that produced ids (and EOS)
    weights = torch.stack([cross[f"decoder.{layer}.cross_attn"][0, h, first:first + rows, :positions]
                           for layer, h in heads]).float().cpu()
    starts = (row_positions(weights, width) * seconds_per_position).tolist()
    # a token ends where the next one starts; the last one where EOS starts, or (length limit) at the audio's end
    ends = starts[1:] if ended else starts[1:] + [positions * seconds_per_position]
    where = [i for i, t in enumerate(ids) if t < eos_id]  # the text tokens' places among ids
    timed: list[list[Any]] = []
    k = 0
    for text, group in split_words(token_pieces(tokenizer, [ids[i] for i in where]), spaces):
        timed.append([text, group, starts[where[k]], ends[where[k + len(group) - 1]]])
        k += len(group)
    words = [Word(text=text, start=round(s, 2), end=round(e, 2), tokens=tuple(g))
             for text, g, s, e in merge_punctuation(timed)]
    return words, starts[: len(ids)]


def word_lines(words: Sequence[Word]) -> list[str]:
    """`word <start s> <end s> <text>`, one line a word (the text last: it may hold anything but a newline)."""
    return [f"word {w.start:.2f} {w.end:.2f} {w.text.strip()}" for w in words]


def add_words(p: Any, tokenizer: Any, given_heads: Sequence[Sequence[int]] | None, *, ended: bool, samples: int,
              hop: int) -> None:
    """Fill a transcription's words, token_starts, covered and alignment_heads (inference/predictor.py `_transcribe`, after the
    teacher-forced pass recorded p.maps): `samples` of audio at `hop` samples per log-mel frame."""
    keys = p.maps["decoder.0.cross_attn"].shape[-1]
    p.covered = covered_positions(samples, hop, keys)
    p.alignment_heads = alignment_heads(p.net, given_heads)
    p.words, p.token_starts = word_timestamps(
        p.maps, ids=p.ids, prompt_length=p.prompt_length, ended=ended, tokenizer=tokenizer,
        heads=p.alignment_heads, positions=p.covered,
        seconds_per_position=p.frame_seconds * p.shown.shape[-1] / keys, eos_id=int(p.net.eos_id),
        spaces=not set(p.source_tokens) & set(NO_SPACES))
