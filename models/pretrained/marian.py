"""OPUS-MT / Marian (Hugging Face `MarianMTModel`) -> the zoo's `Translator`, its tokenizer and decoding settings.

`load_marian("hf:Helsinki-NLP/opus-mt-en-de")` (or a folder written by save_pretrained) builds the Translator with
Marian's options (post-norm, SiLU, eps 1e-5, no final norm, split sinusoids, final_logits_bias, decoder start =
pad) and maps the weights; `MarianTokenizer` reads the folder's SentencePiece models + vocab.json and travels in
zoo checkpoints as plain strings; `generation_settings` reads generation_config.json for HF-identical decoding.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.pretrained.source import Source, resolve
from models.translator import Translator
from utils.errors import FileFormatError, MissingFileError

ACTS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}


@dataclass
class Encoded:
    """What `tokenizers.Tokenizer.encode` returns, as far as the zoo reads it."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]


class MarianTokenizer:
    """Marian's tokenizer without transformers: SentencePiece source / target models and one shared vocab.json.

    encode: an optional >>lang<< code, source pieces -> vocab ids (unknown pieces -> <unk>), then </s> (the model
    reads sources that end in it, so it is always appended). decode: target pieces up to </s>, pad dropped.
    As transformers' MarianTokenizer without sacremoses installed (no Moses punctuation normalisation).
    """

    def __init__(self, source_spm: bytes, target_spm: bytes, vocab: dict[str, int], eos: str = "</s>",
                 unk: str = "<unk>", pad: str = "<pad>") -> None:
        import sentencepiece as spm

        self.files = {"source_spm": source_spm, "target_spm": target_spm}
        self.source, self.target = spm.SentencePieceProcessor(), spm.SentencePieceProcessor()
        self.source.LoadFromSerializedProto(source_spm)
        self.target.LoadFromSerializedProto(target_spm)
        self.vocab = dict(vocab)
        self.inverse = {i: t for t, i in self.vocab.items()}
        missing = [t for t in (eos, unk, pad) if t not in self.vocab]
        if missing:
            raise FileFormatError(f"vocab.json lacks the special tokens {missing}")
        self.eos_id, self.unk_id, self.pad_id = self.vocab[eos], self.vocab[unk], self.vocab[pad]
        self.start_id = self.pad_id  # Marian's decoder starts from pad

    @classmethod
    def from_folder(cls, folder: Path) -> "MarianTokenizer":
        files = {n: folder / n for n in ("source.spm", "target.spm", "vocab.json")}
        missing = [n for n, p in files.items() if not p.is_file()]
        if missing:
            raise MissingFileError(f"{folder} lacks {', '.join(missing)} (Marian's tokenizer files)")
        config = folder / "tokenizer_config.json"
        if config.is_file() and json.loads(config.read_text()).get("separate_vocabs"):
            raise FileFormatError(f"{folder}: separate source / target vocabularies are not supported yet")
        return cls(files["source.spm"].read_bytes(), files["target.spm"].read_bytes(),
                   json.loads(files["vocab.json"].read_text()))

    def to_str(self) -> str:
        """One JSON string (checkpoints hold plain data only)."""
        return json.dumps({"marian": {k: base64.b64encode(v).decode() for k, v in self.files.items()},
                           "vocab": self.vocab})

    @classmethod
    def from_str(cls, text: str) -> "MarianTokenizer":
        state = json.loads(text)
        files = {k: base64.b64decode(v) for k, v in state["marian"].items()}
        return cls(files["source_spm"], files["target_spm"], state["vocab"])

    def get_vocab_size(self) -> int:
        return max(self.inverse) + 1

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str:
        return self.inverse.get(int(i), "<unk>")

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoded:
        """Source ids ending in </s> (always: see the class note). Offsets are character spans of the pieces."""
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2:]
        pieces = code + self.source.encode(text, out_type=str)
        ids = [self.vocab.get(p, self.unk_id) for p in pieces] + [self.eos_id]
        offsets, pos = [], 0
        for p in pieces:
            n = len(p.lstrip("\u2581")) if p not in code else 0
            start = text.find(p.lstrip("\u2581")[:1], pos) if n else pos
            start = pos if start < 0 else start
            offsets.append((start, start + n))
            pos = start + n
        return Encoded(ids, pieces + ["</s>"], offsets + [(len(text), len(text))])

    def encode_target(self, text: str) -> list[int]:
        """Target-side ids (the target SentencePiece model), no </s>: training labels."""
        return [self.vocab.get(p, self.unk_id) for p in self.target.encode(text, out_type=str)]

    def save(self, path: str) -> None:
        """The run directory's tokenizer.json: this tokenizer as one JSON string (load_tokenizer reads it)."""
        Path(path).write_text(self.to_str())

    def encode_batch(self, texts: list[str]) -> list[Encoded]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Target text of ids, the special tokens (</s>, <unk>, <pad>) left out."""
        pieces = [self.id_to_token(i) for i in ids if int(i) not in (self.pad_id, self.eos_id, self.unk_id)]
        return self.target.decode_pieces(pieces).replace("\u2581", " ").strip()

    def decode_generated(self, ids: list[int]) -> str:
        """Text of generated ids: up to the first </s>, padding dropped."""
        out = []
        for i in ids:
            if int(i) == self.eos_id:
                break
            out.append(int(i))
        return self.decode(out)


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

    def attn(zoo: str, theirs: str) -> None:
        for kind in ("weight", "bias"):  # the core's one qkv projection: q, k, v stacked in that order
            out[f"{zoo}.qkv.{kind}"] = torch.cat([ref[f"{theirs}.{n}_proj.{kind}"] for n in "qkv"])
            out[f"{zoo}.proj.{kind}"] = ref[f"{theirs}.out_proj.{kind}"]

    def copy(pairs: list[tuple[str, str]]) -> None:
        for zoo, theirs in pairs:
            for kind in ("weight", "bias"):
                out[f"{zoo}.{kind}"] = ref[f"{theirs}.{kind}"]

    for i in range(encoder_depth):
        z, r = f"encoder.blocks.{i}", f"encoder.layers.{i}"
        attn(f"{z}.attn", f"{r}.self_attn")
        copy([(f"{z}.norm1", f"{r}.self_attn_layer_norm"), (f"{z}.mlp.fc1", f"{r}.fc1"), (f"{z}.mlp.fc2", f"{r}.fc2"),
              (f"{z}.norm2", f"{r}.final_layer_norm")])
    for i in range(decoder_depth):
        z, r = f"decoder.{i}", f"decoder.layers.{i}"
        attn(f"{z}.self_attn", f"{r}.self_attn")
        attn(f"{z}.cross_attn", f"{r}.encoder_attn")
        copy([(f"{z}.norm1", f"{r}.self_attn_layer_norm"), (f"{z}.norm2", f"{r}.encoder_attn_layer_norm"),
              (f"{z}.mlp.fc1", f"{r}.fc1"), (f"{z}.mlp.fc2", f"{r}.fc2"), (f"{z}.norm3", f"{r}.final_layer_norm")])
    return out


def _weights(source: Source) -> dict[str, torch.Tensor]:
    path = source.file("model.safetensors")
    if path is not None:
        from safetensors.torch import load_file

        return load_file(str(path))
    path = source.file("pytorch_model.bin")
    if path is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no model.safetensors or "
                               "pytorch_model.bin")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_marian(spec: str | Source) -> tuple[Translator, MarianTokenizer, dict[str, Any], dict[str, Any]]:
    """A Marian source -> (Translator in eval mode with its weights, tokenizer, Translator kwargs, decoding
    settings from generation_config.json)."""
    source = resolve(spec) if isinstance(spec, str) else spec
    config_file = source.file("config.json")
    if config_file is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no config.json")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "marian":
        raise FileFormatError(f"pretrained={source.spec!r} is a {config.get('model_type')!r} model, not Marian")
    kwargs = translator_kwargs(config)
    net = Translator(**kwargs)
    state = map_weights(_weights(source), kwargs["encoder_depth"], kwargs["decoder_depth"])
    net.load_state_dict(state, strict=True)
    return net.eval(), MarianTokenizer.from_folder(source.path), kwargs, generation_settings(source, config)


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


def loaded_translator(spec: str):
    """predict.py on a Marian source: the Translator in a Seq2SeqModule with HF's decoding settings, as a Loaded."""
    from omegaconf import OmegaConf

    from models.seq2seq import Seq2SeqModule
    from viz.explain import Loaded

    net, tokenizer, kwargs, settings = load_marian(spec)
    module = Seq2SeqModule(net, optimizer=torch.optim.AdamW, **settings)
    module.tokenizer = tokenizer
    cfg = OmegaConf.create({"model": {"net": kwargs, **settings}, "pretrained": spec})
    return Loaded(module.eval(), "translator", None, cfg, Path(spec))
