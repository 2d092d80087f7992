"""What one word of a sentence attends to in a pretrained text encoder (predict.py on a BERT source): per layer,
the top tokens of the head-averaged row and of the most focused head, and pictures of every layer and head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.attention import attention_maps
from utils.errors import UserError
from viz import plots

SPECIALS = ("[CLS]", "[SEP]", "[PAD]")


def pretrained_text_kind(spec: str) -> str | None:
    """"bert" | "marian" when `spec` names a pretrained text model (hf:/pkg: or a folder with its config.json),
    None for anything else (a run directory, a checkpoint, another family). Missing hub ids raise their
    MissingDataError here, so predict.py stops with the message that says how to get them."""
    from models.pretrained.source import resolve

    path = Path(spec).expanduser()
    if not (spec.startswith(("hf:", "pkg:")) or (path.is_dir() and (path / "config.json").is_file())):
        return None
    source = resolve(spec)
    config = source.file("config.json")
    kind = json.loads(config.read_text()).get("model_type") if config else None
    return kind if kind in ("bert", "marian") else None


def encoder_maps(net: torch.nn.Module, ids: Tensor, pad: Tensor | None = None) -> Tensor:
    """(layers, B, H, L, L) self-attention maps of a TextEncoder, computed beside its usual kernel."""
    _, maps = attention_maps(net, ids, pad)
    return torch.stack(list(maps.values()))


def word_position(tokens: list[str], word: str) -> int:
    """Index of the first token that is `word` (case-insensitive); a UserError naming the tokens otherwise."""
    low = [t.lower() for t in tokens]
    if word.lower() not in low:
        raise UserError(f"--word {word!r} is not a token of the sentence (tokens: {' '.join(tokens)})")
    return low.index(word.lower())


def _top(row: Tensor, tokens: list[str], k: int) -> str:
    w, i = row.topk(min(k, row.numel()))
    return ", ".join(f"{tokens[j]} {p:.2f}" for p, j in zip(w.tolist(), i.tolist()))


def describe_word(tokens: list[str], maps: Tensor, q: int, k: int = 3) -> list[str]:
    """One line per layer: the top-k tokens of query q's head-averaged row and of its most focused head (the head
    giving the largest weight to one word token other than q itself). maps: (layers, H, L, L)."""
    words = torch.tensor([t not in SPECIALS for t in tokens])
    words[q] = False
    lines = []
    for layer, m in enumerate(maps):
        rows = m[:, q]  # (H, L)
        head = int(rows.masked_fill(~words, 0).amax(-1).argmax())
        lines.append(f"layer {layer}: mean of heads: {_top(rows.mean(0), tokens, k)}; "
                     f"head {head}: {_top(rows[head], tokens, k)}")
    return lines


def plot_word(tokens: list[str], maps: Tensor, q: int, title: str, path: Path) -> Path:
    """One matrix: a row per layer (head mean) and per head, the columns the tokens, the values q's attention."""
    rows, labels = [], []
    for layer, m in enumerate(maps):
        rows += [m[:, q].mean(0)] + list(m[:, q])
        labels += [f"L{layer} mean"] + [f"L{layer} h{h}" for h in range(m.shape[0])]
    return plots.plot_matrix(torch.stack(rows), labels, tokens, title, path, "token looked at", "layer / head")


def explain_word(net: torch.nn.Module, tokenizer: object, sentence: str, word: str, out_dir: Path | None,
                 stem: str) -> tuple[list[str], list[Path]]:
    """Printable lines for `word` in `sentence` and, with out_dir, its picture plus every layer's head-mean map."""
    from models.pretrained.bert import tokenize

    ids, _ = tokenize(tokenizer, [sentence])
    tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]  # type: ignore[attr-defined]
    q = word_position(tokens, word)
    with torch.no_grad():
        maps = encoder_maps(net, ids)[:, 0]  # (layers, H, L, L)
    lines = [f"what {tokens[q]!r} (token {q}) attends to:"] + describe_word(tokens, maps, q)
    if out_dir is None:
        return lines, []
    paths = [plot_word(tokens, maps, q, f"attention of {tokens[q]!r}, every layer and head\n{sentence}",
                       Path(out_dir) / f"{stem}_{word}_attention.png")]
    for layer, m in enumerate(maps):
        paths.append(plots.plot_matrix(m.mean(0), tokens, tokens, f"layer {layer} self-attention (mean over heads)"
                                       f"\n{sentence}", Path(out_dir) / f"{stem}_layer{layer}_attention.png",
                                       "token looked at (key)", "token looking (query)"))
    return lines, paths


def pretrained_text_lines(args: Any, sentences: list[str]) -> list[str]:
    """predict.py on a pretrained text source: what the encoder's `--word` attends to, or the translations (with
    `--attention-dir` pictures as for a trained translator); the lines to print."""
    from viz.explain import explain_translation, slug

    out: list[str] = []
    if pretrained_text_kind(args.ckpt_path) == "bert":
        from models.pretrained.bert import load_bert

        net, tokenizer = load_bert(args.ckpt_path)
        for i, sentence in enumerate(sentences):
            lines, pictures = explain_word(net, tokenizer, sentence, args.word, args.attention_dir,
                                           f"{i:03d}_{slug(sentence)}")
            out += [sentence] + lines + [f"  attention picture: {p}" for p in pictures]
        return out
    from models.pretrained.marian import loaded_translator

    loaded = loaded_translator(args.ckpt_path)
    net = loaded.module.net
    for flag, value, n in (("--layer", args.layer, len(net.decoder)),
                           ("--encoder-layer", args.encoder_layer, len(net.encoder.blocks))):
        if not -n <= value < n:
            raise UserError(f"{flag} {value}: this model has {n} layers there; expected {-n}..{n - 1}")
    heads = net.decoder[0].self_attn.num_heads
    if any(not 0 <= h < heads for h in args.heads or []):
        raise UserError(f"--heads {args.heads}: this model has {heads} heads per layer (0..{heads - 1})")
    for i, sentence in enumerate(sentences):
        text, pictures = explain_translation(loaded, sentence, args.attention_dir, f"{i:03d}_{slug(sentence)}",
                                             args.beam_size, args.layer, args.encoder_layer, args.heads)
        out += [f"{sentence}\t{text}" if len(sentences) > 1 else text] + [f"  attention picture: {p}" for p in pictures]
    return out
