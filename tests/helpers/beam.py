"""A plain beam search for one sentence (python lists, no cache, no batching): the reference that the
Translator's batched, cached beam search is tested against, on CPU (tests/test_translator.py) and on a GPU
(bench/gpu/check.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.tokenizer import BOS_ID, EOS_ID, PAD_ID


def reference_beam(model, src: torch.Tensor, k: int, steps: int, alpha: float) -> list[int]:
    """Plain beam search for one sentence: python lists, no cache, no batching."""
    memory, pad = model.encode(src[None])
    lp = lambda n: ((5 + n) / 6) ** alpha  # noqa: E731
    beams = [([BOS_ID], 0.0, False)]
    for _ in range(steps):
        cands = []
        for ys, logp, done in beams:
            if done:
                cands.append((ys + [PAD_ID], logp, True))
                continue
            step = F.log_softmax(model.decode(torch.tensor([ys], device=src.device), memory, pad)[0, -1].float(), -1)
            for tok in range(model.vocab_size):
                cands.append((ys + [tok], logp + step[tok].item(), tok == EOS_ID))
        length = lambda c: sum(1 for t in c[0][1:] if t != PAD_ID)  # noqa: E731
        cands.sort(key=lambda c: c[1] / lp(length(c)), reverse=True)
        beams = cands[:k]
        if all(d for _, _, d in beams):
            break
    best = max(beams, key=lambda c: c[1] / lp(sum(1 for t in c[0][1:] if t != PAD_ID)))
    return best[0][1:]
