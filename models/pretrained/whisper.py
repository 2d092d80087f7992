"""Whisper (Hugging Face `WhisperForConditionalGeneration`: config.json + model.safetensors) -> the zoo's `Whisper`,
its tokenizer and Whisper's decoding settings (the prompt, suppressed tokens, alignment heads).

`convert(resolve("hf:openai/whisper-tiny.en"))` or a folder written by save_pretrained. Weights are renamed, the
query / key / value projections stacked into the core's one qkv (Whisper's key has no bias: a zero one, which
softmax ignores; see models/whisper.py), nothing computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.pretrained import HF_ACTIVATIONS, Converted, hf_tokenizer, read_json, read_weights
from models.pretrained.seq2seq_layers import copy, map_layers
from models.pretrained.source import Source
from utils.errors import FileFormatError, MissingFileError


def accepts(src: Source, config: dict[str, Any]) -> bool:
    return config.get("model_type") == "whisper"


def whisper_kwargs(config: dict[str, Any], spec: str) -> dict[str, Any]:
    """A WhisperConfig (as a dict) -> Whisper arguments; refuses what the zoo's Whisper does not express."""
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if config[a] != config[b]:
            raise FileFormatError(f"pretrained={spec!r}: {a}={config[a]} != {b}={config[b]}: the zoo's Whisper "
                                  f"uses one size for both")
    if config.get("scale_embedding"):
        raise FileFormatError(f"pretrained={spec!r}: scale_embedding=true is not Whisper's (expected false)")
    act = config.get("activation_function", "gelu")
    if act not in HF_ACTIVATIONS:
        raise FileFormatError(f"pretrained={spec!r}: activation_function={act!r}: expected one of "
                              f"{', '.join(HF_ACTIVATIONS)}")
    dim = int(config["d_model"])
    ffn = int(config["encoder_ffn_dim"])
    if int(dim * (ffn / dim)) != ffn:
        raise FileFormatError(f"pretrained={spec!r}: encoder_ffn_dim={ffn} is not a width the blocks' mlp_ratio "
                              f"gives for d_model={dim}")
    return dict(vocab_size=int(config["vocab_size"]), n_mels=int(config.get("num_mel_bins", 80)), dim=dim,
                encoder_depth=int(config["encoder_layers"]), decoder_depth=int(config["decoder_layers"]),
                num_heads=int(config["encoder_attention_heads"]), mlp_ratio=ffn / dim,
                audio_len=int(config.get("max_source_positions", 1500)),
                max_len=int(config.get("max_target_positions", 448)), norm_eps=1e-5, act=HF_ACTIVATIONS[act],
                drop=float(config.get("dropout", 0.0)), attn_drop=float(config.get("attention_dropout", 0.0)),
                bos_id=int(config["decoder_start_token_id"]), eos_id=int(config["eos_token_id"]),
                pad_id=int(config.get("pad_token_id", config["eos_token_id"])))


def map_weights(ref: dict[str, Tensor], encoder_depth: int, decoder_depth: int) -> dict[str, Tensor]:
    """WhisperForConditionalGeneration state dict -> Whisper state dict (output tied to the token embedding)."""
    ref = {k.removeprefix("model."): v for k, v in ref.items()}
    tokens = ref["decoder.embed_tokens.weight"]
    if "proj_out.weight" in ref and not torch.equal(ref["proj_out.weight"], tokens):
        raise FileFormatError("proj_out differs from the token embedding: an untied output is not Whisper's")
    out = {"tgt_embed.weight": tokens, "head.weight": tokens, "audio_pos": ref["encoder.embed_positions.weight"],
           "text_pos": ref["decoder.embed_positions.weight"]}

    copy(ref, out, [("conv1", "encoder.conv1"), ("conv2", "encoder.conv2"), ("encoder.norm", "encoder.layer_norm"),
                    ("norm", "decoder.layer_norm")])
    map_layers(ref, out, encoder_depth, decoder_depth, key_bias=False)  # Whisper's key has no bias
    return out


def decoding_settings(src: Source, config: dict[str, Any]) -> dict[str, Any]:
    """Whisper's decoding rules from generation_config.json (over config.json), as Whisper.transcribe takes them.

    prompt: <|startoftranscript|>, then for a multilingual model the language and task tokens (English and
    transcribe unless told: `whisper_prompt` builds others from `languages` / `tasks`), then <|notimestamps|>
    (timestamps off). Where the file has no no_timestamps_token_id, the forced_decoder_ids of older files.
    suppress_tokens: never generated; begin_suppress_tokens: not as the first token. alignment_heads:
    [layer, head] pairs of the cross-attention that follows the audio (word timestamps), where given.
    """
    gen = {**config, **read_json(src.file("generation_config.json"))}
    languages = {k: int(v) for k, v in (gen.get("lang_to_id") or {}).items()}
    tasks = {k: int(v) for k, v in (gen.get("task_to_id") or {}).items()}
    multilingual = bool(gen.get("is_multilingual", False)) and bool(languages) and bool(tasks)
    no_timestamps = gen.get("no_timestamps_token_id")
    start = int(gen["decoder_start_token_id"])
    if no_timestamps is not None:
        prompt = whisper_prompt(start, int(no_timestamps), languages, tasks, multilingual)
    else:  # older files force the prompt's later tokens: [[1, id], [2, id], ...]
        forced = sorted((int(i), int(t)) for i, t in gen.get("forced_decoder_ids") or [] if t is not None)
        prompt = [start] + [t for _, t in forced]
    max_length = int(gen.get("max_length") or config.get("max_target_positions", 448))
    return settings(prompt, suppress=gen.get("suppress_tokens"), begin_suppress=gen.get("begin_suppress_tokens"),
                    beam_size=int(gen.get("num_beams") or 1), length_penalty=float(gen.get("length_penalty") or 1.0),
                    max_new_tokens=max(1, max_length - len(prompt)), no_timestamps=no_timestamps,
                    languages=languages if multilingual else {}, tasks=tasks if multilingual else {},
                    alignment_heads=gen.get("alignment_heads"))


def settings(prompt: list[int], *, suppress: Any, begin_suppress: Any, max_new_tokens: int, no_timestamps: Any,
             languages: dict[str, int], tasks: dict[str, int], alignment_heads: Any, beam_size: int = 1,
             length_penalty: float = 1.0) -> dict[str, Any]:
    """The `module` settings Whisper.transcribe and predict.py take, whichever format they were read from (this
    file's generation_config.json, CTranslate2's config.json: models/pretrained/whisper_ct2.py)."""
    return dict(prompt=[int(t) for t in prompt], suppress_tokens=[int(t) for t in suppress or []],
                begin_suppress_tokens=[int(t) for t in begin_suppress or []], beam_size=int(beam_size),
                length_penalty=float(length_penalty), max_new_tokens=int(max_new_tokens),
                no_timestamps_id=None if no_timestamps is None else int(no_timestamps),
                languages=dict(languages), tasks=dict(tasks),
                alignment_heads=[[int(a), int(b)] for a, b in alignment_heads or []])


def whisper_prompt(start: int, no_timestamps: int, languages: dict[str, int], tasks: dict[str, int],
                   multilingual: bool, language: str = "<|en|>", task: str = "transcribe") -> list[int]:
    """[<|startoftranscript|>, <|language|>, <|task|>, <|notimestamps|>] (the middle two: multilingual only)."""
    if not multilingual:
        return [start, no_timestamps]
    if language not in languages:
        raise ValueError(f"language={language!r}: expected one of the model's {', '.join(sorted(languages))}")
    if task not in tasks:
        raise ValueError(f"task={task!r}: expected one of {', '.join(sorted(tasks))}")
    return [start, languages[language], tasks[task], no_timestamps]


def convert(source: Source) -> Converted:
    """A Whisper source -> Converted: the network's config and weights, its tokenizer (tokenizer.json), and the
    decoding settings of generation_config.json in `module`."""
    config_file = source.file("config.json")
    if config_file is None:
        raise MissingFileError(f"pretrained={source.spec!r}: {source.path} has no config.json")
    config = read_json(config_file)
    if config.get("model_type") != "whisper":
        raise FileFormatError(f"pretrained={source.spec!r} is a {config.get('model_type')!r} model, not Whisper")
    kwargs = whisper_kwargs(config, source.spec)
    state = map_weights(read_weights(source), kwargs["encoder_depth"], kwargs["decoder_depth"])
    return converted(kwargs, state, hf_tokenizer(source), decoding_settings(source, config))


def converted(kwargs: dict[str, Any], state: dict[str, Tensor], tokenizer: str, module: dict[str, Any]) -> Converted:
    """The Converted of a Whisper: its arguments, zoo state dict, tokenizer (serialised) and decoding settings."""
    preprocess = {"modality": "audio", "sample_rate": 16000, "n_mels": kwargs["n_mels"], "chunk_seconds": 30}
    return Converted({"_target_": "models.whisper.Whisper", **kwargs}, state, preprocess, tokenizer=tokenizer,
                     module=module)
