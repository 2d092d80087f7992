"""Does the translator's cross-attention align words? Month and weekday names on the phrase test set.

    python -m bench.bench_alignment RUN_DIR [--picture docs/attention_translation.png]

For every test phrase whose reference translation names a month or weekday (wide or abbreviated CLDR
forms of the run's target language, from Babel), the decoder is run with teacher forcing on the
reference. For the first target token of each such name, the argmax over source tokens of the
cross-attention (one decoder layer, mean over heads) must fall on a token of the corresponding English
name. Occurrences are paired in order when source and reference name the same month / day equally
often; other phrases are skipped (counted). Prints the hit rate per decoder layer and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import torch
from babel.dates import get_day_names, get_month_names

from models.attention import attention_maps
from models.tokenizer import BOS_ID, EOS_ID
from inference.load import load_trained
from viz.pictures import draw_translation


def name_forms(locale: str) -> dict[str, list[set[str]]]:
    """{"month": [forms of January, ...], "weekday": [forms of Monday, ...]} in one locale."""
    out: dict[str, list[set[str]]] = {"month": [set() for _ in range(12)], "weekday": [set() for _ in range(7)]}
    for width in ("wide", "abbreviated"):
        for context in ("format", "stand-alone"):
            for i, name in get_month_names(width, context, locale).items():
                out["month"][i - 1].add(name)
            for i, name in get_day_names(width, context, locale).items():
                out["weekday"][i].add(name)
    return out


def find_words(text: str, forms: set[str]) -> list[tuple[int, int]]:
    """Character spans of whole-word occurrences of any form, in text order (longest form wins)."""
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return [m.span() for m in re.finditer(rf"(?<!\w)(?:{alternatives})(?!\w)", text)]


def tokens_in(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens whose characters overlap span."""
    return [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0] and b > a]


def word_pairs(source: str, target: str, en: dict, de: dict) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
    """(kind, source span, target span) for each month / weekday name present in both, paired in order."""
    pairs = []
    for kind in ("month", "weekday"):
        for en_forms, de_forms in zip(en[kind], de[kind]):
            s, t = find_words(source, en_forms), find_words(target, de_forms)
            if s and len(s) == len(t):
                pairs += [(kind, a, b) for a, b in zip(s, t)]
    return pairs


@torch.no_grad()
def measure(loaded, pairs_text: list[tuple[str, str]], locale: str) -> dict:
    net, tok = loaded.module.net, loaded.module.tokenizer
    en, de = name_forms("en"), name_forms(locale)
    layers = [f"decoder.{i}.cross_attn" for i in range(len(net.decoder))]
    hits = {name: Counter() for name in layers + ["mean of layers"]}
    total, skipped = Counter(), 0
    for source, target in pairs_text:
        found = word_pairs(source, target, en, de)
        if not found:
            if find_words(target, set().union(*de["month"], *de["weekday"])):
                skipped += 1  # names in the reference without a countable English partner
            continue
        s_enc, t_enc = tok.encode(source, add_special_tokens=False), tok.encode(target, add_special_tokens=False)
        if len(s_enc.ids) > net.max_len or len(t_enc.ids) + 1 > net.max_len:
            skipped += 1
            continue
        src = torch.tensor([s_enc.ids])
        tgt_in = torch.tensor([[BOS_ID] + t_enc.ids])  # row t of the map produces target token t
        _, maps = attention_maps(net, src, tgt_in, layers=layers, average_heads=True)
        stacked = torch.stack([maps[n][0] for n in layers])  # (layers, T, S)
        for kind, s_span, t_span in found:
            s_tokens, t_tokens = tokens_in(s_enc.offsets, s_span), tokens_in(t_enc.offsets, t_span)
            if not s_tokens or not t_tokens:
                continue
            total[kind] += 1
            row = stacked[:, t_tokens[0]]  # (layers, S)
            for name, r in zip(layers + ["mean of layers"], list(row) + [row.mean(0)]):
                hits[name][kind] += int(int(r.argmax()) in s_tokens)
    n = sum(total.values())
    result = {"cases": dict(total), "skipped_phrases": skipped, "hit_rate_percent": {}}
    for name, h in hits.items():
        result["hit_rate_percent"][name] = {
            "all": 100.0 * sum(h.values()) / max(n, 1),
            **{k: 100.0 * h[k] / max(total[k], 1) for k in total},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="translator run directory or checkpoint (trained on data=phrases)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_alignment.json"))
    parser.add_argument("--picture", type=Path, default=None, help="also draw the alignment of --sentence here")
    parser.add_argument("--sentence", default="Monday, March 3, 2025")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_trained(args.run)
    if loaded.kind != "translator" or loaded.cfg.data.dataset != "phrases":
        raise SystemExit(f"{args.run}: expected a translator trained on data=phrases")
    dm = loaded.datamodule
    dm.setup("test")
    pairs = list(zip(dm.sources(args.split), dm.references(args.split)))
    result = measure(loaded, pairs, str(loaded.cfg.data.target_lang))
    result.update(run=str(loaded.source), split=args.split, phrases=len(pairs))
    for name, rate in result["hit_rate_percent"].items():
        print(f"{name:22s} " + "  ".join(f"{k} {v:5.1f} %" for k, v in rate.items()))
    print(f"cases: {result['cases']}, phrases skipped: {result['skipped_phrases']} of {len(pairs)}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    if args.picture:
        best = max(range(len(loaded.module.net.decoder)),
                   key=lambda i: result["hit_rate_percent"][f"decoder.{i}.cross_attn"]["all"])
        p = loaded.predict(args.sentence, maps=True)
        text, paths = p.text, draw_translation(p, args.picture.parent, "tmp_alignment", cross_layer=best)
        paths[0].replace(args.picture)
        paths[1].unlink()
        print(f"{args.sentence} -> {text}; picture (decoder layer {best}): {args.picture}")


if __name__ == "__main__":
    main()
