"""What a sliding window forgets and what attention sinks keep, measured on a trained causal LM.

    python -m bench.passkey RUN_DIR [--window 16] [--sinks 4] [--blocks 200] [--threads 1]

The run's own weights (trained with full causal attention, e.g. `python train.py model=lm`) are run three
ways on fixed blocks of its test split (block_size tokens each), side by side in one process:

* full: causal attention over the whole block (as trained);
* window: each token sees itself and the window - 1 tokens before it (Mistral's sliding window);
* window + sinks: the same, plus the first `sinks` tokens, which every query may always attend to
  (StreamingLLM's attention sinks, Xiao et al. 2023; the core's `num_global` in a causal layer).

Printed per setting:

* loss (nats / token) and perplexity over the positions >= window, where the window has evicted tokens;
* the last query's attention (mean over heads, then over layers) on the first token and on a "passkey"
  position p = block_size // 4, outside the window: a windowed layer gives it exactly 0;
* the passkey's influence on the last prediction: the mean KL divergence between the last position's
  next-token distributions with token p as it is and with token p replaced by a random token. A window
  removes direct attention to p, but stacked layers still carry it up to depth x (window - 1) tokens;
  p = 1, inside the sinks, shows what the sinks keep.

Read it as a measurement of this model, not a general law: a model trained without windows was never
taught to use sinks, and a char-level model of block 64 is no long-context model. The ratios are what
the script is for (bench/README: ratios measured side by side in one run, not timed tests).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from inference.load import load
from models.attention import attention_maps
from viz.maps import stacked_maps


def set_attention(net: torch.nn.Module, window: int | None, sinks: int) -> None:
    """Every attention layer of `net` windowed (None: full causal) with `sinks` always-visible first
    tokens. The core reads window / num_global at call time; the weights are unchanged."""
    for block in net.blocks:
        block.attn.window = window
        block.attn.num_global = sinks if window is not None else 0


@torch.no_grad()
def measure(net: torch.nn.Module, blocks: torch.Tensor, window: int, passkeys: list[int], vocab: int,
            seed: int = 0) -> dict[str, float]:
    """Loss past the window, the last query's attention on token 0 and on passkeys[0], and each
    passkey's influence (KL) on the last prediction."""
    logits = net(blocks[:, :-1])
    targets = blocks[:, 1:]
    loss = F.cross_entropy(logits[:, window:].flatten(0, 1), targets[:, window:].flatten()).item()
    _, maps = attention_maps(net, blocks[:, :-1])
    stacked = torch.stack([stacked_maps({k: v[b:b + 1] for k, v in maps.items()})
                           for b in range(len(blocks))])  # (B, layers, H, T, T)
    last = stacked[..., -1, :].mean(dim=(0, 1, 2))  # (T,): mean over examples, layers and heads
    out = {"loss": loss, "perplexity": float(torch.exp(torch.tensor(loss))),
           "attn_first": float(last[0]), "attn_passkey": float(last[passkeys[0]])}
    base = logits[:, -1].log_softmax(-1)
    g = torch.Generator().manual_seed(seed)
    for p in passkeys:
        changed = blocks[:, :-1].clone()
        changed[:, p] = (changed[:, p] + torch.randint(1, vocab, (len(blocks),), generator=g)) % vocab
        other = net(changed)[:, -1].log_softmax(-1)
        out[f"kl_passkey_{p}"] = max(0.0, float(F.kl_div(other, base, log_target=True, reduction="batchmean")))
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained causal LM run (model=lm) or checkpoint")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=200, help="test blocks measured")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load(args.run)
    net, dm = predictor.net.eval(), predictor.datamodule
    dm.setup("test")
    T = int(net.block_size)
    ids = dm.ids["test"]
    count = min(args.blocks, (len(ids) - 1) // (T + 1))
    step = (len(ids) - 1) // (T + 1) // count
    blocks = torch.stack([ids[k * step * (T + 1):k * step * (T + 1) + T + 1] for k in range(count)])  # (B, T + 1)
    passkeys = [T // 4, 1]
    print(f"{args.run}: {count} test blocks of {T} tokens, {len(net.blocks)} layers; window {args.window}, "
          f"{args.sinks} sinks; passkey positions {passkeys} (the last query is at {T - 1})")
    rows = {}
    for name, window, sinks in (("full", None, 0), ("window", args.window, 0),
                                (f"window + {args.sinks} sinks", args.window, args.sinks)):
        set_attention(net, window, sinks)
        rows[name] = measure(net, blocks, args.window, passkeys, int(net.vocab_size))
    set_attention(net, None, 0)
    keys = list(next(iter(rows.values())))
    print(f"{'':>18}" + "".join(f"{k:>16}" for k in keys))
    for name, row in rows.items():
        print(f"{name:>18}" + "".join(f"{row[k]:>16.4g}" for k in keys))
    full = rows["full"]["perplexity"]
    print("perplexity past the window, relative to full attention: " +
          ", ".join(f"{name} {row['perplexity'] / full:.3f}x" for name, row in rows.items()))
    return rows


if __name__ == "__main__":
    main()
