"""OPUS-MT / Marian (Hugging Face `MarianMTModel`) -> the zoo's `Translator`, its tokenizer and decoding settings.

`load_marian("hf:Helsinki-NLP/opus-mt-en-de")` (or a folder written by save_pretrained) builds the Translator with
Marian's options (post-norm, SiLU, eps 1e-5, no final norm, split sinusoids, final_logits_bias, decoder start =
pad) and maps the weights; `MarianTokenizer` reads the folder's SentencePiece models + vocab.json and travels in
zoo checkpoints as plain strings; `generation_settings` reads generation_config.json for HF-identical decoding.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from models.pretrained import HF_ACTIVATIONS, Converted, read_weights
from models.pretrained.seq2seq_layers import map_layers
from models.pretrained.source import Source, resolve
from models.spm_tokenizer import MarianTokenizer
from models.translator import Translator
from utils.errors import FileFormatError, MissingFileError

ACTS = HF_ACTIVATIONS


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") == "marian"


def translator_kwargs(config: dict) -> dict:
    """A MarianConfig (as a dict) -> Translator arguments; refuses what the Translator does not express."""
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config[a] != config[b]:
            raise FileFormatError(f"{a}={config[a]} != {b}={config[b]}: the Translator uses one size for both")
    if config.get("decoder_vocab_size") not in (None, config["vocab_size"]) or \
            not config.get("share_encoder_decoder_embeddings", True):
        raise FileFormatError("separate source / target embeddings are not supported yet")
    act = config.get("activation_function", "swish")
    if act not in ACTS:
        raise FileFormatError(f"activation_function={act!r}: expected one of {', '.join(ACTS)}")
    dim = int(config["d_model"])
    return dict(vocab_size=int(config["vocab_size"]), dim=dim, encoder_depth=int(config["encoder_layers"]),
                decoder_depth=int(config["decoder_layers"]), num_heads=int(config["encoder_attention_heads"]),
                mlp_ratio=int(config["encoder_ffn_dim"]) / dim, max_len=int(config["max_position_embeddings"]),
                positions="sinusoidal", tie_embeddings=True, drop=float(config.get("dropout", 0.1)),
                attn_drop=float(config.get("attention_dropout", 0.0)), norm_first=False, act=ACTS[act],
                norm_eps=1e-5, final_norm=False, sinusoid_layout="split",
                scale_embeddings=bool(config.get("scale_embedding", True)), logits_bias=True,
                pad_id=int(config["pad_token_id"]), eos_id=int(config["eos_token_id"]),
                bos_id=int(config.get("decoder_start_token_id", config["pad_token_id"])))


def map_weights(ref: dict[str, torch.Tensor], encoder_depth: int, decoder_depth: int) -> dict[str, torch.Tensor]:
    """MarianMTModel state dict -> Translator state dict (shared embeddings, lm_head tied to them)."""
    ref = {k.removeprefix("model."): v for k, v in ref.items()}
    shared = ref.get("shared.weight", ref.get("encoder.embed_tokens.weight"))
    head = ref.get("lm_head.weight", shared)
    if not torch.equal(head, shared):
        raise FileFormatError("lm_head differs from the shared embeddings: untied output layers are not supported")
    out = {"src_embed.weight": shared, "tgt_embed.weight": shared, "head.weight": shared,
           "final_logits_bias": ref["final_logits_bias"].reshape(-1)}

    map_layers(ref, out, encoder_depth, decoder_depth)
    return out


def convert(source: Source) -> Converted:
    """A Marian source -> Converted: the Translator's config and weights, its tokenizer, and the decoding
    settings of generation_config.json as Seq2SeqModule arguments."""
    config_file = source.file("config.json")
    if config_file is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no config.json")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "marian":
        raise FileFormatError(f"pretrained={source.spec!r} is a {config.get('model_type')!r} model, not Marian")
    kwargs = translator_kwargs(config)
    state = map_weights(read_weights(source), kwargs["encoder_depth"], kwargs["decoder_depth"])
    return Converted({"_target_": "models.translator.Translator", **kwargs}, state, {"modality": "text"},
                     tokenizer=MarianTokenizer.from_folder(source.path).to_str(),
                     module=generation_settings(source, config))


def load_marian(spec: str | Source) -> tuple[Translator, MarianTokenizer, dict[str, Any], dict[str, Any]]:
    """A Marian source -> (Translator in eval mode with its weights, tokenizer, Translator kwargs, decoding
    settings from generation_config.json)."""
    conv = convert(resolve(spec) if isinstance(spec, str) else spec)
    kwargs = {k: v for k, v in conv.net.items() if k != "_target_"}
    return conv.build(), conv.load_tokenizer(), kwargs, conv.module


def generation_settings(source: Source, config: dict) -> dict[str, Any]:
    """Seq2SeqModule decoding arguments equal to HF generate with the checkpoint's generation_config.json."""
    gen_file = source.file("generation_config.json")
    gen = {**config, **(json.loads(gen_file.read_text()) if gen_file else {})}
    if gen.get("early_stopping") not in (None, False, True):
        raise FileFormatError(f"early_stopping={gen['early_stopping']!r}: only true / false are supported")
    banned = [ids[0] for ids in gen.get("bad_words_ids") or [] if len(ids) == 1]
    return dict(beam_size=int(gen.get("num_beams", 1)), max_new_tokens=int(gen.get("max_length", 20)) - 1,
                length_penalty=float(gen.get("length_penalty", 1.0)), length_norm="hf", banned_tokens=banned,
                forced_eos=gen.get("forced_eos_token_id") is not None,
                renormalize_logits=bool(gen.get("renormalize_logits", False)),
                early_stopping=bool(gen.get("early_stopping") or False))
