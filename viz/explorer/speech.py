"""The explorer page's data for a transcription (Whisper): the log-mel spectrogram and the audio of what the
model heard, the transcript, each generated token's cross-attention over time (every decoder layer and head),
and the word timestamps the page highlights while the audio plays.

Only the audio positions the input covers are shown (the rest of the 30 s window is the silence Whisper pads
with); the maps are the Prediction's recorded ones (inference/predictor.py), cut to those columns."""

from __future__ import annotations

from typing import Any

import matplotlib
import torch

from inference.predictor import Prediction
from inference.speech_words import covered_positions
from models.whisper_frontend import HOP_LENGTH, SAMPLE_RATE
from viz.explorer.encoding import budget, pack, png_data_url, wav_data_url
from viz.maps import in_layer_order


def speech_payload(p: Prediction, title: str) -> dict[str, Any]:
    """Data of a transcription's page (its maps recorded: predict(x, maps=True); words too for the highlight:
    predict(x, maps=True, words=True))."""
    notes: list[str] = []
    names = in_layer_order([n for n in p.maps if n.endswith("cross_attn")])
    keys = p.maps[names[0]].shape[-1]
    covered = p.covered or covered_positions(p.input.shape[-1], HOP_LENGTH, keys)
    frames_per_key = p.shown.shape[-1] // keys  # 2: the encoder's stride
    start = max(0, p.prompt_length - 1)  # the query that produced the first generated token
    stacked = torch.stack([p.maps[n][0, :, start:, :covered] for n in names]).float()  # (L, H, tokens, covered)
    if covered < keys:
        seconds = frames_per_key * p.frame_seconds
        notes.append(f"the audio covers {covered} of the {keys} audio positions ({covered * seconds:.2f} of "
                     f"{keys * seconds:.3g} s); the attention to the silence after it is not shown")
    # the words' map, the mean of the alignment heads, kept apart: _budget may average the heads of each layer
    aligned = [stacked[names.index(f"decoder.{layer}.cross_attn"), h] for layer, h in p.alignment_heads]
    stacked, heads = budget(stacked, notes)
    spec = p.shown[:, : covered * frames_per_key].float()
    spec = (spec - spec.min()) / (spec.max() - spec.min()).clamp_min(1e-6)
    rgb = torch.from_numpy(matplotlib.colormaps["magma"](spec.flip(0).numpy())[..., :3]).permute(2, 0, 1)
    if not p.words:
        notes.append("no word timestamps (predict.py --words, or predict(..., words=True)): nothing to highlight")
    return {
        "kind": "speech",
        "title": title,
        "notes": notes,
        "prediction": {"text": p.text, "label": "transcript"},
        "image": png_data_url(rgb),
        "audio": wav_data_url(p.input.reshape(-1).cpu(), SAMPLE_RATE),
        "seconds": covered * frames_per_key * p.frame_seconds,
        "rows": p.target_tokens,
        "layers": names,
        "heads": heads,
        "maps": pack(stacked),
        "alignment": [list(pair) for pair in p.alignment_heads],  # the heads the words were aligned with
        "aligned": pack(torch.stack(aligned).mean(0)) if aligned else None,  # (tokens, covered)
        "words": [{"text": w.text.strip(), "start": w.start, "end": w.end} for w in p.words],
    }
