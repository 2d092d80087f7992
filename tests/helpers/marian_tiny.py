"""A tiny random-weight MarianMTModel saved with save_pretrained, with real SentencePiece models and vocab.json:
the reference the Marian tests (and the decoding benchmark, at full size) compare the zoo against."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = [
    "The animal didn't cross the street because it was too tired.", "Where is the station?",
    "I would like two coffees, please.", "The weather is nice today.", "She reads a book in the garden.",
    "We are going to the market on Monday.", "How much does this cost?", "The children play football.",
    "My brother lives in Berlin.", "Das Tier überquerte die Straße nicht, weil es zu müde war.",
    "Wo ist der Bahnhof?", "Ich möchte zwei Kaffee, bitte.", "Das Wetter ist heute schön.",
    "Sie liest ein Buch im Garten.", "Wir gehen am Montag auf den Markt.", "Wie viel kostet das?",
    "Die Kinder spielen Fußball.", "Mein Bruder wohnt in Berlin.", "Good morning!", "It is raining again.",
]


def spm_model(path: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 4), model_prefix=str(path), vocab_size=vocab_size,
                                   character_coverage=1.0, model_type="unigram", bos_id=-1, eos_id=-1,
                                   unk_id=0, minloglevel=2)
    return path.with_suffix(".model")


def make_tiny_marian(folder: Path, d_model: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
                     max_length: int = 24, num_beams: int = 4, seed: int = 0, vocab_size: int | None = None,
                     init_std: float = 1.0, eos_bias: float = 8.0) -> Path:
    """save_pretrained folder of a random MarianMTModel (+ tokenizer files + generation_config.json).
    vocab_size pads vocab.json with dummy tokens up to that size (the benchmark's OPUS-MT-sized vocabulary)."""
    import sentencepiece as spm
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = spm_model(folder / "src", 60), spm_model(folder / "tgt", 60)
    pieces: list[str] = []
    for m in (src, tgt):
        sp = spm.SentencePieceProcessor(model_file=str(m))
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) not in pieces + ["<unk>"]]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    for i in range(len(vocab), (vocab_size or 0) - 1):
        vocab[f"<dummy{i}>"] = i
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "source.spm").write_bytes(src.read_bytes())
    (folder / "target.spm").write_bytes(tgt.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"separate_vocabs": False}))
    pad, V = vocab["<pad>"], len(vocab)
    config = MarianConfig(vocab_size=V, decoder_vocab_size=V, d_model=d_model, encoder_layers=layers,
                          decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                          encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=64, pad_token_id=pad,
                          eos_token_id=0, decoder_start_token_id=pad, forced_eos_token_id=0, scale_embedding=True,
                          activation_function="swish", share_encoder_decoder_embeddings=True, init_std=init_std)
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    with torch.no_grad():  # some sentences end early (EOS likelier), so every stopping path of the search runs
        model.final_logits_bias.normal_(0.0, 0.1)
        model.final_logits_bias[0, 0] += eos_bias
    model.generation_config = GenerationConfig(
        bad_words_ids=[[pad]], bos_token_id=0, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
        max_length=max_length, num_beams=num_beams, pad_token_id=pad, renormalize_logits=True)
    model.save_pretrained(folder)
    return folder
