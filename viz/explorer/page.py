"""The explorer page of a Prediction: one self-contained HTML file per input, for every model that
shows maps.

    p = predictor.predict(x, maps=True)               # inference/predictor.py
    Path("out.html").write_text(page(p, "digit.png"))

The page holds its data as JSON in a <script type="application/json"> tag and its plain JS / CSS
inline (template.html beside this file): no request leaves the file. Attention weights are the
per-head maps of the Prediction (rollout and video token matrices from
viz/maps.py; a ViT with a class token adds its patch features' principal components as colours), stored as uint16 (w * 65535, base64): 1.5e-5 precision at 2 bytes a weight."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib
import torch
from einops import rearrange
from torchaudio.functional.functional import _hz_to_mel, _mel_to_hz  # the scales torchaudio builds its banks with
from torch import Tensor

from inference.predictor import Prediction
from viz.explorer.encoding import budget, pack, png_data_url, wav_data_url
from viz.explorer.speech import speech_payload
from viz.maps import _grid, in_layer_order, patch_range, pca_colours, rollout, video_token_maps

TEMPLATE = Path(__file__).with_name("template.html")
MAX_TOKENS = 512  # text: tokens kept per axis (the page says when it cut)
MAX_CONTACT_RESIDUES = 1024  # a protein's contact maps: residues kept per axis (~2.8 MB of base64 a map)


def render(payload: dict[str, Any]) -> str:
    """The page: template with the payload as inline JSON (`</` escaped so no string can close the
    tag)."""
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("__TITLE__", _escape(payload["title"]))
        .replace("/*__DATA__*/", data)
    )


def iframe(page: str, height: int = 900) -> str:
    """A page in an iframe: a host that inserts markup without running its scripts (Gradio's
    gr.HTML, a notebook's output) runs them in srcdoc; the sandbox keeps them from the host page."""
    return (
        f'<iframe title="attention explorer" sandbox="allow-scripts" style="width:100%;height:{height}px;'
        f'border:1px solid #ddd" srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _per_head(maps: dict[str, Tensor], names: list[str]) -> Tensor:
    """{name: (1, H, R, C)} -> (L, H, R, C) in the given layer order."""
    return torch.stack([maps[n][0] for n in names])


# ---------------------------------------------------------------------------------------------- text


# Groups of a text page: key, label, which layers, and the tokens of rows and columns (Prediction fields).
TEXT_GROUPS = (
    (
        "encoder",
        "encoder self-attention",
        lambda n: n.startswith("encoder."),
        "source_tokens",
        "source_tokens",
    ),
    (
        "decoder",
        "decoder self-attention",
        lambda n: n.startswith("decoder") and n.endswith(".self_attn"),
        "target_tokens",
        "input_tokens",
    ),
    (
        "cross",
        "cross-attention (decoder -> source)",
        lambda n: n.endswith(".cross_attn"),
        "target_tokens",
        "source_tokens",
    ),
)


def _causal_payload(p: Prediction, title: str) -> dict[str, Any]:
    """A causal LM's head and model view: one group, its causal self-attention over prompt +
    continuation (rows and columns the same tokens; a token attends to itself and earlier ones);
    `boundary`: where the continuation starts among them."""
    notes: list[str] = []
    names = in_layer_order(list(p.maps))
    tokens, stacked = p.context_tokens, _per_head(p.maps, names)
    boundary = p.prompt_length
    if len(tokens) > MAX_TOKENS:
        notes.append(f"{len(tokens)} tokens, the last {MAX_TOKENS} are shown")
        cut = len(tokens) - MAX_TOKENS
        tokens, stacked, boundary = tokens[cut:], stacked[..., cut:, cut:], max(0, boundary - cut)
    stacked, heads = budget(stacked, notes)
    group = {"key": "causal", "label": "causal self-attention", "rows": tokens, "cols": tokens,
             "layers": names, "heads": heads, "maps": pack(stacked), "boundary": boundary}
    shown = {"text": p.text, "source": p.input, "label": "continuation"}
    return {"kind": "text", "title": title, "prediction": shown, "notes": notes, "groups": [group]}


def _protein_payload(p: Prediction, title: str) -> dict[str, Any]:
    """A protein's page: the text head and model view over <cls> residues <eos> (one group, every layer's
    self-attention), and its contact maps: the contact head's probabilities (when fitted) and the true contacts
    (when a structure was read), both (L, L) over the residues."""
    notes: list[str] = []
    names = in_layer_order(list(p.maps))
    tokens, stacked = p.source_tokens, _per_head(p.maps, names)
    if len(tokens) > MAX_TOKENS:
        notes.append(f"{len(tokens)} tokens, the first {MAX_TOKENS} are shown in the head view")
        tokens, stacked = tokens[:MAX_TOKENS], stacked[..., :MAX_TOKENS, :MAX_TOKENS]
    stacked, heads = budget(stacked, notes)
    group = {"key": "protein", "label": "self-attention over residues", "rows": tokens, "cols": tokens,
             "layers": names, "heads": heads, "maps": pack(stacked)}
    n = min(len(str(p.input)), MAX_CONTACT_RESIDUES)
    if n < len(str(p.input)):
        notes.append(f"{len(str(p.input))} residues: the contact maps show the first {n}")
    contacts = {"residues": str(p.input)[:n],
                "predicted": None if p.contact_probs is None else pack(p.contact_probs[:n, :n]),
                "true": None if p.true_contacts is None else pack(p.true_contacts[:n, :n].float())}
    if p.contact_probs is None:
        notes.append("the contact head is not fitted: no predicted contacts (evaluate.py contacts=true fits it)")
    shown = {"text": f"{p.input} (pseudo-perplexity {p.perplexity:.3f})", "label": "sequence"}
    return {"kind": "text", "title": title, "prediction": shown, "notes": notes, "groups": [group],
            "contacts": contacts}


def _text_payload(p: Prediction, title: str) -> dict[str, Any]:
    """Head and model view data of a sentence: encoder self-attention, and for a translation decoder
    self- and cross-attention. Rows of decoder maps are the tokens being produced; columns of the
    decoder self-attention are the decoder's inputs (<s> and the tokens so far)."""
    notes: list[str] = []
    groups = []
    for key, label, chosen, row_field, col_field in TEXT_GROUPS:
        names = in_layer_order([n for n in p.maps if chosen(n)])
        if not names:
            continue
        rows, cols = getattr(p, row_field), getattr(p, col_field)
        stacked = _per_head(p.maps, names)
        if max(len(rows), len(cols)) > MAX_TOKENS:
            notes.append(
                f"{label}: {len(rows)} x {len(cols)} tokens, the first {MAX_TOKENS} of each are shown"
            )
            rows, cols = rows[:MAX_TOKENS], cols[:MAX_TOKENS]
            stacked = stacked[..., :MAX_TOKENS, :MAX_TOKENS]
        stacked, heads = budget(stacked, notes)
        groups.append(
            {
                "key": key,
                "label": label,
                "rows": rows,
                "cols": cols,
                "layers": names,
                "heads": heads,
                "maps": pack(stacked),
            }
        )
    shown = (
        {"text": p.text, "source": p.input}
        if p.text is not None
        else {"text": p.input, "label": "sentence"}
    )
    return {"kind": "text", "title": title, "prediction": shown, "notes": notes, "groups": groups}


# ------------------------------------------------------------------------------------- image / audio


def _ticks(n: int, span: float, unit: str, count: int = 6) -> list[list[Any]]:
    """[fraction along the axis, label] for `count` evenly spaced values of 0..span."""
    return [
        [k / (count - 1), f"{span * k / (count - 1):.{2 if unit == 's' else 0}f}"]
        for k in range(count)
    ]


def _mel_ticks(net: torch.nn.Module, count: int = 5) -> list[list[Any]]:
    """Hz at evenly spaced positions of the mel axis (the front end's mel scale: HTK, torchaudio's default and
    Kaldi's, or Whisper's Slaney)."""
    scale = (
        net.frontend.mel.mel_scale if hasattr(net.frontend, "mel") else net.frontend
    )  # LogMel | KaldiFbank | WhisperFrontEnd
    f_max = scale.f_max if scale.f_max is not None else net.sample_rate / 2
    kind = getattr(scale, "mel_scale", "htk")  # Kaldi's 1127 ln(1 + f / 700) is HTK's
    lo, hi = _hz_to_mel(float(scale.f_min), kind), _hz_to_mel(float(f_max), kind)
    hz = _mel_to_hz(torch.linspace(lo, hi, count, dtype=torch.float64), kind)
    return [
        [
            k / (count - 1),
            f"{float(hz[k]):.0f}",
        ]
        for k in range(count)
    ]


def payload(p: Prediction, title: str) -> dict[str, Any]:
    """The data of a Prediction's page (its maps recorded: predict(x, maps=True))."""
    if not p.maps:
        raise ValueError("this prediction holds no attention maps: predict(x, maps=True)")
    if p.net.task == "complete":
        return _causal_payload(p, title)
    if p.net.task == "unmask":
        return _protein_payload(p, title)
    if p.net.task == "transcribe":
        return speech_payload(p, title)
    if p.modality == "text":
        return _text_payload(p, title)
    if p.modality == "video":
        return _video_payload(p, title)
    return _grid_payload(p, title)


def page(p: Prediction, title: str) -> str:
    """The explorer page of a Prediction: self-contained HTML, offline."""
    return render(payload(p, title))


def _grid_payload(p: Prediction, title: str) -> dict[str, Any]:
    """Data of an image / audio page: the input picture, per-head maps of every layer, the rollout,
    the top classes."""
    net, x = p.net, p.input
    names = in_layer_order(list(p.maps))
    stacked = _per_head(p.maps, names)  # (L, H, tokens, tokens)
    flow = rollout([stacked[i].mean(0, keepdim=True) for i in range(len(names))])[0]
    payload = {
        "kind": p.modality,
        "title": title,
        "notes": [],
        "prediction": {"top": p.top},
        "grid": list(_grid(net, x)),
        "cls": getattr(net, "cls_token", None) is not None,
        "layers": names,
        "heads": [str(h) for h in range(stacked.shape[1])],
        "maps": pack(stacked),
        "rollout": pack(flow),
    }
    if p.modality == "image":
        payload["image"] = png_data_url(p.shown)
        payload["prefix"] = patch_range(net).start  # class, distillation and register tokens
        if payload["cls"] and p.tokens is not None:
            colours = pca_colours(p.tokens[0, patch_range(net)], tuple(payload["grid"]))
            payload["pca"] = png_data_url(colours.permute(2, 0, 1))
        return payload
    spec = p.shown.float()  # (mels, frames) log-mel, low frequencies first
    spec = (spec - spec.min()) / (spec.max() - spec.min()).clamp_min(1e-6)
    rgb = torch.from_numpy(matplotlib.colormaps["magma"](spec.flip(0).numpy())[..., :3]).permute(
        2, 0, 1
    )
    hop = net.frontend.hop_length / net.sample_rate
    payload.update(
        image=png_data_url(rgb),
        flip_rows=True,
        audio=wav_data_url(x.reshape(-1), net.sample_rate),
        xaxis={"label": "time (s)", "ticks": _ticks(6, spec.shape[1] * hop, "s")},
        yaxis={"label": "frequency (Hz, mel scale)", "ticks": _mel_ticks(net)},
    )
    return payload


def _video_payload(p: Prediction, title: str) -> dict[str, Any]:
    net, x, maps = p.net, p.input, p.maps
    tubelet = getattr(net.patch_embed, "tubelet", 1)  # VideoMAE: a token spans 2 frames
    T = x.shape[2] // tubelet  # time steps of tokens
    depth = len(net.blocks)
    mean = {k: v.mean(dim=1) for k, v in maps.items()}
    per_layer, _ = video_token_maps(net, mean, 1, T)
    grid = net.patch_embed.grid_for(tuple(x.shape[-2:]))
    if net.attention == "divided":  # TimeSformer's class token in every frame: the patches' share
        n = grid[0] * grid[1]
        maps = {k: _patches_only(v, n) if k.endswith("attn_space") else v for k, v in maps.items()}
    payload: dict[str, Any] = {
        "kind": "video",
        "title": title,
        "notes": [],
        "prediction": {"top": p.top},
        "grid": list(grid),
        "frames": [png_data_url(f) for f in p.shown],
        "attention": net.attention,
        "layers": [f"block {i}" for i in range(depth)],
        "heads": [str(h) for h in range(next(iter(maps.values())).shape[1])],
        "rollout": pack(_per_frame(rollout(per_layer)[0], T, tubelet)),
    }
    if (
        net.attention == "divided"
    ):  # time: (L, H, N, T, T) per position; space: (L, H, T, N, N) per frame
        payload["time"] = pack(
            torch.stack(
                [
                    rearrange(maps[f"blocks.{i}.attn_time"], "n h t s -> h n t s")
                    for i in range(depth)
                ]
            )
        )
        payload["space"] = pack(
            torch.stack(
                [
                    rearrange(maps[f"blocks.{i}.attn_space"], "t h n m -> h t n m")
                    for i in range(depth)
                ]
            )
        )
    else:
        joint = torch.stack([maps[f"blocks.{i}.attn"][0] for i in range(depth)])
        payload["joint"] = pack(_per_frame(joint, T, tubelet))
    return payload


def _patches_only(space: Tensor, n: int) -> Tensor:
    """(..., 1 + n, 1 + n) spatial maps with a class token -> (..., n, n): the patches' rows and
    their share of each row (as viz.maps.video_token_maps counts them); (..., n, n) as it is."""
    if space.shape[-1] == n:
        return space
    patches = space[..., 1:, 1:]
    return patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)


def _per_frame(m: Tensor, steps: int, tubelet: int) -> Tensor:
    """(..., steps*N, steps*N) token matrices -> (..., frames*N, frames*N), frames = steps * tubelet:
    each frame of a token's tubelet reads that token's row, and a column's weight is split evenly
    between the frames of its tubelet (rows still sum to 1). The page draws one map per frame."""
    if tubelet == 1:
        return m
    n = m.shape[-1] // steps
    m = m.unflatten(-1, (steps, n)).unflatten(-3, (steps, n))  # (..., t, n, s, m)
    m = m.repeat_interleave(tubelet, dim=-4).repeat_interleave(tubelet, dim=-2) / tubelet
    return m.flatten(-2).flatten(-3, -2)
