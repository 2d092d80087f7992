"""The attention pictures (PNG) of a Prediction; the lines of what a text encoder's word attends to.

    p = predictor.predict(x, maps=True)
    paths = draw(p, Path("pictures"), "digit")   # rollout; a translation's alignment; an encoder's word

A ViT with a class token also gets DINO's pictures: the class token's last-layer attention per head
(raw, and the smallest patch set holding 60 % of each head's mass) and its patch features' first
principal components as colours.

Everything is drawn from the maps the prediction recorded (viz/maps.py selects heads and combines
them): the model is not run here."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from inference.predictor import Prediction
from inference.protein import predicted_contacts
from utils.errors import UserError
from viz import plots
from viz.maps import backbone_views, causal_views, classifier_views, in_layer_order, translation_views

SPECIALS = ("[CLS]", "[SEP]", "[PAD]")


def draw(
    p: Prediction,
    out_dir: Path,
    stem: str,
    *,
    layer: int = -1,
    encoder_layer: int = -1,
    word: str = "it",
    label: str | None = None,
) -> list[Path]:
    """The pictures of one prediction in out_dir, named <stem>_*.png. layer: a translation's
    cross-attention layer or a video's temporal block; encoder_layer: a translation's encoder layer;
    word: a text encoder's word; label: a classifier's true class, for the title."""
    if p.net.task == "complete":
        return draw_completion(p, out_dir, stem)
    if p.net.task == "transcribe":
        return draw_transcription(p, out_dir, stem, layer)
    if p.net.task == "unmask":
        return draw_protein(p, out_dir, stem, predicted_contacts(p), layer)
    if p.text is not None:
        return draw_translation(p, out_dir, stem, layer, encoder_layer)
    if p.embedding is not None:
        return draw_word(p, word, out_dir, stem)
    paths = draw_classifier(p, out_dir, stem, layer, label)
    if p.modality == "image" and getattr(p.net, "cls_token", None) is not None and p.maps:
        paths += draw_backbone(p, out_dir, stem)
    return paths


def what_it_says(p: Prediction) -> str:
    """A classifier's top class, or what a backbone (no classifier head) gives."""
    if p.top:
        name, prob = p.top[0]
        return f"prediction: {name} ({prob:.0%})"
    return "backbone (no classifier head)"


def draw_backbone(p: Prediction, out_dir: Path, stem: str, share: float = 0.6) -> list[Path]:
    """DINO's pictures of an image: the class token's last-layer attention, every head raw and
    thresholded to `share` of its mass (<stem>_cls_heads.png), and the patch features' first three
    principal components as colours (<stem>_pca.png)."""
    views = backbone_views(p.net, p.input, p.maps, p.tokens, share)  # type: ignore[arg-type]
    title = f"{what_it_says(p)}; class token attention, {views.layer}"
    paths = [plots.plot_cls_heads(p.shown, views.heads, views.masks, share, title,
                                  Path(out_dir) / f"{stem}_cls_heads.png")]
    if views.colours is not None:
        paths.append(plots.plot_pca(p.shown, views.colours, what_it_says(p),
                                    Path(out_dir) / f"{stem}_pca.png"))
    return paths


def _heads_text(heads: list[int] | None) -> str:
    return "heads " + ",".join(map(str, heads)) if heads else "mean over heads"


def draw_classifier(
    p: Prediction, out_dir: Path, stem: str, time_layer: int = -1, label: str | None = None
) -> list[Path]:
    """The rollout picture of an image / audio / video prediction (and a video's frame-to-frame
    attention)."""
    out = p.logits if p.logits is not None else p.features
    maps = classifier_views(p.net, p.input, out[None], p.maps, p.heads, time_layer)  # type: ignore
    title = what_it_says(p) + (f", label: {label}" if label is not None else "")
    path = Path(out_dir) / f"{stem}_attention.png"
    if p.modality == "image":
        return [plots.plot_image_attention(p.shown, maps.tokens[0], title, path)]
    if p.modality == "audio":
        hop = p.net.frontend.hop_length / p.net.sample_rate
        return [plots.plot_audio_attention(p.shown, maps.tokens[0], title, path, hop)]
    return [
        plots.plot_video_attention(
            p.shown, maps.tokens[0], maps.time[0], title, path, maps.time_layer
        )
    ]


def draw_translation(
    p: Prediction, out_dir: Path, stem: str, cross_layer: int = -1, encoder_layer: int = -1
) -> list[Path]:
    """A translation's cross-attention alignment and encoder self-attention."""
    maps = translation_views(
        p.source_tokens, p.target_tokens, p.maps, cross_layer, encoder_layer, p.heads
    )
    heads = _heads_text(p.heads)
    return [
        plots.plot_matrix(
            maps.cross,
            maps.target_tokens,
            maps.source_tokens,
            f"cross-attention {maps.cross_layer} ({heads})\n{p.input} -> {p.text}",
            Path(out_dir) / f"{stem}_cross_attention.png",
            "source token (looked at)",
            "target token (being produced)",
        ),
        plots.plot_matrix(
            maps.encoder,
            maps.source_tokens,
            maps.source_tokens,
            f"encoder self-attention {maps.encoder_layer} ({heads})\n{p.input}",
            Path(out_dir) / f"{stem}_encoder_attention.png",
            "token looked at (key)",
            "token looking (query)",
        ),
    ]


def transcription_cross(p: Prediction, layer: int = -1) -> tuple[str, Tensor]:
    """(layer name, (generated tokens, audio positions)) a transcription's decoder cross-attention of
    `layer` (index among the cross-attention layers; -1 the last), mean over the chosen heads, one row
    per generated token (EOS included when generated): the query that produced it."""
    names = [n for n in in_layer_order(list(p.maps)) if n.endswith("cross_attn")]
    if not names:
        raise UserError("the prediction recorded no cross-attention (expected maps=True)")
    if not -len(names) <= layer < len(names):
        raise UserError(f"--layer {layer}: this model has {len(names)} cross-attention layers "
                        f"(0..{len(names) - 1}, or -1 for the last)")
    name = names[layer]
    m = p.maps[name][0]  # (H, T, S)
    m = m[p.heads] if p.heads else m
    start = max(0, len(p.source_tokens) - 1)
    return name, m.float().mean(0)[start:].cpu()


def draw_transcription(p: Prediction, out_dir: Path, stem: str, layer: int = -1) -> list[Path]:
    """The log-mel spectrogram above the decoder's cross-attention of each generated token over time (with
    --words, each word's start marked on both and its text above the spectrogram)."""
    if not p.maps or not p.target_tokens:
        return []
    name, cross = transcription_cross(p, layer)
    title = f"cross-attention {name} ({_heads_text(p.heads)})\n-> {p.text}"
    words = [(w.text, w.start, w.end) for w in p.words] or None  # --words: their boundaries marked
    return [plots.plot_token_time(p.shown, cross, p.target_tokens, title,
                                  Path(out_dir) / f"{stem}_cross_attention.png", p.frame_seconds, words)]


# ------------------------------------------------------------------------------------ causal LM


def completion_title(p: Prediction, limit: int = 60) -> str:
    """'prompt' -> 'continuation', each shortened, whitespace escaped (a picture's title line)."""
    def short(text: str) -> str:
        return repr(text if len(text) <= limit else text[: limit - 3] + "...")
    return f"{short(str(p.input))} -> {short(p.text or '')}"


def draw_completion(p: Prediction, out_dir: Path, stem: str) -> list[Path]:
    """A causal LM's pictures: every layer's attention over prompt + continuation (_causal_attention),
    the attention on the first token per layer (_sink), and each head's previous-token and induction
    scores on a repeated random sequence (_heads)."""
    views = causal_views(p.maps, p.repeat_maps, p.repeat_length, p.repeat_start, p.heads)
    title = f"{completion_title(p)} ({_heads_text(p.heads)})"
    out = Path(out_dir)
    paths = [
        plots.plot_causal_layers(views.per_layer, p.context_tokens, p.prompt_length, views.layers, title,
                                 out / f"{stem}_causal_attention.png",
                                 heads=f"mean over {_heads_text(p.heads)}" if p.heads else "mean over heads"),
        plots.plot_sink(views.sink, title, out / f"{stem}_sink.png"),
    ]
    if views.previous is not None:
        paths.append(plots.plot_head_scores(views.previous, views.induction, p.repeat_length,
                                            "previous-token and induction heads (every head)",
                                            out / f"{stem}_heads.png"))
    return paths


# ----------------------------------------------------------------------------------- text encoder


def stacked(p: Prediction) -> Tensor:
    """(layers, H, L, L) self-attention of a one-sentence prediction, first layer first."""
    return torch.stack([p.maps[k][0] for k in in_layer_order(list(p.maps))])


def word_position(tokens: list[str], word: str) -> int:
    """Index of the first token that is `word` (case-insensitive); a UserError naming the tokens
    otherwise."""
    low = [t.lower() for t in tokens]
    if word.lower() not in low:
        raise UserError(
            f"--word {word!r} is not a token of the sentence (tokens: {' '.join(tokens)})"
        )
    return low.index(word.lower())


def _top(row: Tensor, tokens: list[str], k: int) -> str:
    w, i = row.topk(min(k, row.numel()))
    return ", ".join(f"{tokens[j]} {p:.2f}" for p, j in zip(w.tolist(), i.tolist()))


def describe_word(tokens: list[str], maps: Tensor, q: int, k: int = 3) -> list[str]:
    """One line per layer: the top-k tokens of query q's head-averaged row and of its most focused
    head (the head giving the largest weight to one word token other than q itself). maps: (layers,
    H, L, L)."""
    words = torch.tensor([t not in SPECIALS for t in tokens])
    words[q] = False
    lines = []
    for layer, m in enumerate(maps):
        rows = m[:, q]  # (H, L)
        head = int(rows.masked_fill(~words, 0).amax(-1).argmax())
        lines.append(
            f"layer {layer}: mean of heads: {_top(rows.mean(0), tokens, k)}; "
            f"head {head}: {_top(rows[head], tokens, k)}"
        )
    return lines


def word_lines(p: Prediction, word: str) -> list[str]:
    """Printable lines: what `word` attends to in every layer of a text encoder's prediction."""
    q = word_position(p.source_tokens, word)
    return [f"what {p.source_tokens[q]!r} (token {q}) attends to:"] + describe_word(
        p.source_tokens, stacked(p), q
    )


def draw_word(p: Prediction, word: str, out_dir: Path, stem: str) -> list[Path]:
    """The attention of `word` in every layer and head, and every layer's head-mean map."""
    tokens, maps = p.source_tokens, stacked(p)
    q = word_position(tokens, word)
    rows, labels = [], []
    for layer, m in enumerate(maps):
        rows += [m[:, q].mean(0)] + list(m[:, q])
        labels += [f"L{layer} mean"] + [f"L{layer} h{h}" for h in range(m.shape[0])]
    paths = [
        plots.plot_matrix(
            torch.stack(rows),
            labels,
            tokens,
            f"attention of {tokens[q]!r}, every layer and head\n{p.input}",
            Path(out_dir) / f"{stem}_{word}_attention.png",
            "token looked at",
            "layer / head",
        )
    ]
    for layer, m in enumerate(maps):
        paths.append(
            plots.plot_matrix(
                m.mean(0),
                tokens,
                tokens,
                f"layer {layer} self-attention (mean over heads)\n{p.input}",
                Path(out_dir) / f"{stem}_layer{layer}_attention.png",
                "token looked at (key)",
                "token looking (query)",
            )
        )
    return paths


# ---------------------------------------------------------------------------------------------- protein


def protein_title(p: Prediction, limit: int = 50) -> str:
    """name: L residues, pseudo-perplexity (a protein picture's first title line)."""
    seq = str(p.input)
    shown = seq if len(seq) <= limit else seq[: limit - 3] + "..."
    return f"{p.name}: {len(seq)} residues, pseudo-perplexity {p.perplexity:.2f}\n{shown}"


def draw_protein(p: Prediction, out_dir: Path, stem: str, top: list[tuple[int, int, float]],
                 layer: int = -1) -> list[Path]:
    """A protein's pictures: the predicted contact map beside the true one when a structure is known
    (<stem>_contacts.png; the true one alone when the contact head is not fitted, none when neither is known),
    every layer's self-attention over the residues, mean over the chosen heads (<stem>_attention.png), and each
    chosen head of `layer` (<stem>_layer<k>_heads.png). top: the printed contacts, marked on the true map."""
    out, paths = Path(out_dir), []
    if p.contact_probs is not None or p.true_contacts is not None:
        paths.append(plots.plot_contacts(p.contact_probs, p.true_contacts, str(p.input), top, protein_title(p),
                                         out / f"{stem}_contacts.png"))
    if p.maps:
        names = in_layer_order(list(p.maps))
        stackedmaps = torch.stack([p.maps[n][0] for n in names])  # (layers, H, T, T)
        heads = p.heads or list(range(stackedmaps.shape[1]))
        chosen = stackedmaps[:, heads].float().cpu()
        paths.append(plots.plot_residue_maps(chosen.mean(1), p.source_tokens,
                                             [f"layer {k} ({n})" for k, n in enumerate(names)],
                                             f"{protein_title(p)}\nself-attention, {_heads_text(p.heads)}",
                                             out / f"{stem}_attention.png"))
        k = range(len(names))[layer]  # --layer, checked against the depth by predict.py
        paths.append(plots.plot_residue_maps(chosen[k], p.source_tokens, [f"head {h}" for h in heads],
                                             f"{protein_title(p)}\nself-attention of layer {k} ({names[k]}), "
                                             f"each head", out / f"{stem}_layer{k}_heads.png"))
    return paths
