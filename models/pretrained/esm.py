"""ESM-2 (Hugging Face `EsmForMaskedLM` / `EsmModel`, or fair-esm's `esm2_*.pt`) -> models.protein.ProteinLM.

Sources: `hf:facebook/esm2_t6_8M_UR50D` (from the cache, offline) or a folder with config.json + weights; a
fair-esm `esm2_*.pt` file with its optional sibling `esm2_*-contact-regression.pt`. Everything maps one to one
(q / k / v stacked into the core's qkv, the tied LM head, the contact regression, the rotary frequency table
as the checkpoint stores it). ESM-2 only: ESM-1b / ESM-1v (learned positions, a norm before the encoder) and
ESMFold are refused.

An `EsmModel` folder has no LM head: it is converted with the zoo's freshly initialised head (the encoder, the
hidden states, the maps and the contacts are the checkpoint's; the logits mean nothing until trained), marked
`preprocess["untrained"] = ["lm_head"]` and said in a note. A fair-esm file without its regression file gets a
zero contact head, marked the same way ("contact_head").

fair-esm files are pickles (their config is an `argparse.Namespace`): they are first read with
`weights_only=True`, and when that fails they are refused unless the user passes trust_pickle=true
(predict.py --trust-pickle), because `torch.load(weights_only=False)` can run code.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, hf_activation, read_json, read_weights
from models.pretrained.source import Source
from models.protein import ProteinLM
from models.protein_alphabet import ESM_TOKENS, Alphabet
from utils.errors import FileFormatError, UserError, note

ESM = Alphabet.named("esm")
FAIR_PREFIXES = ("encoder.sentence_encoder.", "encoder.")  # what fair-esm's upgrade_state_dict strips
# HF EsmLayer (under `encoder.layer.<i>.`) -> the zoo's EncoderBlock; q / k / v are stacked apart.
HF_LAYER = {"attention.output.dense": "attn.proj", "attention.LayerNorm": "norm1", "intermediate.dense": "mlp.fc1",
            "output.dense": "mlp.fc2", "LayerNorm": "norm2"}
FAIR_LAYER = {"self_attn.out_proj": "attn.proj", "self_attn_layer_norm": "norm1", "fc1": "mlp.fc1",
              "fc2": "mlp.fc2", "final_layer_norm": "norm2"}
HEAD = {"dense": "head_dense", "layer_norm": "head_norm"}  # the LM head's parts (HF and fair-esm name them alike)


def accepts(src: Source, config: dict) -> bool:
    return config.get("model_type") == "esm" or is_fair_esm(src.path)


def is_fair_esm(path: Path) -> bool:
    """Whether `path` is a fair-esm checkpoint: a torch zip file whose pickle names `encoder_embed_dim` (judged
    from its bytes, nothing unpickled)."""
    if not path.is_file() or path.suffix != ".pt" or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return pkl is not None and b"encoder_embed_dim" in z.read(pkl)
    except (OSError, zipfile.BadZipFile):
        return False


def convert(source: Source) -> Converted:
    return convert_fair_esm(source) if source.path.is_file() else convert_hf(source)


# --- Hugging Face --------------------------------------------------------------------------------------------


def hf_kwargs(config: dict[str, Any], spec: str) -> dict[str, Any]:
    """An EsmConfig (as a dict) -> ProteinLM arguments; refuses what is not ESM-2."""
    if config.get("is_folding_model"):
        raise FileFormatError(f"pretrained={spec!r}: an ESMFold model (is_folding_model=true); the zoo converts "
                              "the ESM-2 language model only")
    positions = config.get("position_embedding_type", "absolute")
    if positions != "rotary":
        raise FileFormatError(f"pretrained={spec!r}: position_embedding_type={positions!r} (ESM-1b / ESM-1v); "
                              "the zoo converts ESM-2 only, which has 'rotary'")
    if config.get("emb_layer_norm_before"):
        raise FileFormatError(f"pretrained={spec!r}: emb_layer_norm_before=true (ESM-1b's norm before the "
                              "encoder); the zoo converts ESM-2 only, which has none")
    vocab = config.get("vocab_list")
    special = {"vocab_size": len(ESM), "pad_token_id": ESM.pad, "mask_token_id": ESM.mask}
    wrong = [f"{k}={config.get(k)!r}" for k, v in special.items() if config.get(k, v) != v]
    if wrong or (vocab is not None and tuple(vocab) != ESM_TOKENS):
        what = ", ".join(wrong) or "vocab_list"
        raise FileFormatError(f"pretrained={spec!r}: {what} is not ESM's 33-token alphabet (vocab_size=33, "
                              "pad_token_id=1, mask_token_id=32)")
    return dict(alphabet="esm", dim=int(config["hidden_size"]), depth=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]), ffn_dim=int(config["intermediate_size"]),
                max_len=int(config.get("max_position_embeddings", 1026)), positions="rotary",
                token_dropout=bool(config.get("token_dropout", True)), norm_first=True, embed_norm=False,
                final_norm=True, type_vocab_size=0, norm_eps=float(config.get("layer_norm_eps", 1e-5)),
                act=hf_activation(config, spec))


def hf_state(ref: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """EsmForMaskedLM / EsmModel state dict -> ProteinLM's (without the LM head where the source has none)."""
    ref = {_legacy_norm(k.removeprefix("esm.")): v for k, v in ref.items()}
    out = {"tok_embed.weight": ref["embeddings.word_embeddings.weight"]}
    out.update(_pair(ref, "encoder.emb_layer_norm_after", "norm"))
    out.update(_pair(ref, "contact_head.regression", "contact_head"))
    out.update(_rotary(ref))
    for i in range(depth):
        r, z = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):  # the core's one qkv projection: q, k, v stacked in that order
            out[f"{z}attn.qkv.{kind}"] = torch.cat([ref[f"{r}attention.self.{n}.{kind}"]
                                                    for n in ("query", "key", "value")])
        for theirs, zoo in HF_LAYER.items():
            out.update(_pair(ref, r + theirs, z + zoo))
    if "lm_head.dense.weight" in ref:
        out.update(_lm_head(ref, "lm_head.", "lm_head.decoder.weight", out["tok_embed.weight"]))
    return out


def convert_hf(source: Source) -> Converted:
    """An ESM-2 folder (config.json + weights) -> Converted."""
    config = read_json(source.file("config.json"))
    kwargs = hf_kwargs(config, source.spec)
    state = hf_state(read_weights(source), kwargs["depth"])
    untrained = []
    if "head_bias" not in state:  # EsmModel: an encoder without the masked-LM head
        state.update(_fresh(kwargs, "head_"))
        untrained.append("lm_head")
        note(f"pretrained={source.spec}: an EsmModel has no masked-LM head; the head is freshly initialised "
             "(logits and perplexity mean nothing until it is trained; hidden states, maps and contacts are the "
             "checkpoint's)")
    return _converted(kwargs, state, untrained)


# --- fair-esm ------------------------------------------------------------------------------------------------


def read_pickle(path: Path, spec: str, trust: bool) -> dict[str, Any]:
    """A fair-esm .pt file: safely if it can be (plain tensors and dicts), else only when the user trusts it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # it holds more than tensors and plain containers
        pass
    except Exception as err:  # not a torch file, or a damaged one
        raise FileFormatError(f"pretrained={spec!r}: cannot read {path} ({type(err).__name__}: {err})") from None
    if not trust:
        raise UserError(f"pretrained={spec!r}: {path} is a pickle that can run code when loaded (fair-esm's "
                        "format); if you trust the file, pass trust_pickle=true (predict.py: --trust-pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a damaged file; anything its pickle raises
        raise FileFormatError(f"pretrained={spec!r}: cannot read {path} ({type(err).__name__}: {err})") from None


def _cfg(cfg: Any, key: str, default: Any = None) -> Any:
    """A key of fair-esm's model config: an argparse.Namespace in its files, a dict (or DictConfig) elsewhere."""
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def fair_kwargs(data: dict[str, Any], state: dict[str, Tensor], spec: str) -> dict[str, Any]:
    """fair-esm's model_data -> ProteinLM arguments; refuses what is not ESM-2."""
    cfg = (data.get("cfg") or {}).get("model") if isinstance(data.get("cfg"), dict) else None
    if cfg is None:
        raise FileFormatError(f"pretrained={spec!r}: no cfg.model in the file (expected fair-esm's "
                              "{'model': state dict, 'cfg': {'model': ...}})")
    if "embed_positions.weight" in state or "emb_layer_norm_before.weight" in state:
        raise FileFormatError(f"pretrained={spec!r}: learned positions (ESM-1 / ESM-1b / ESM-1v); the zoo "
                              "converts ESM-2 only, which has rotary positions")
    if state["embed_tokens.weight"].shape[0] != len(ESM):
        raise FileFormatError(f"pretrained={spec!r}: {state['embed_tokens.weight'].shape[0]} tokens, not ESM's 33")
    dim = int(_cfg(cfg, "encoder_embed_dim"))
    return dict(alphabet="esm", dim=dim, depth=int(_cfg(cfg, "encoder_layers")),
                num_heads=int(_cfg(cfg, "encoder_attention_heads")), ffn_dim=int(state["layers.0.fc1.weight"].shape[0]),
                max_len=int(_cfg(cfg, "max_positions", 1024)) + 2, positions="rotary",
                token_dropout=bool(_cfg(cfg, "token_dropout", True)), norm_first=True, embed_norm=False,
                final_norm=True, type_vocab_size=0, norm_eps=1e-5, act="gelu")


def fair_state(ref: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """fair-esm's ESM2 state dict (prefixes stripped) -> ProteinLM's."""
    out = {"tok_embed.weight": ref["embed_tokens.weight"]}
    out.update(_pair(ref, "emb_layer_norm_after", "norm"))
    out.update(_pair(ref, "contact_head.regression", "contact_head"))
    out.update(_rotary(ref))
    for i in range(depth):
        r, z = f"layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{z}attn.qkv.{kind}"] = torch.cat([ref[f"{r}self_attn.{n}_proj.{kind}"] for n in "qkv"])
        for theirs, zoo in FAIR_LAYER.items():
            out.update(_pair(ref, r + theirs, z + zoo))
    out.update(_lm_head(ref, "lm_head.", "lm_head.weight", out["tok_embed.weight"]))
    return out


def convert_fair_esm(source: Source) -> Converted:
    """fair-esm's esm2_*.pt (+ the sibling esm2_*-contact-regression.pt when there) -> Converted."""
    path = source.path
    data = read_pickle(path, source.spec, source.trust_pickle)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise FileFormatError(f"pretrained={source.spec!r}: {path} holds no 'model' state dict (expected "
                              "fair-esm's {'model': ..., 'cfg': ...})")
    state = dict(data["model"])
    regression = path.with_name(path.stem + "-contact-regression.pt")
    if regression.is_file():
        state.update(read_pickle(regression, source.spec, source.trust_pickle).get("model") or {})
    state = {_strip(k): v for k, v in state.items()}
    kwargs = fair_kwargs(data, state, source.spec)
    out = fair_state(state, kwargs["depth"])
    untrained = []
    if "contact_head.weight" not in out:
        features = kwargs["depth"] * kwargs["num_heads"]  # one weight per layer and head
        out.update({"contact_head.weight": torch.zeros(1, features), "contact_head.bias": torch.zeros(1)})
        untrained.append("contact_head")
        note(f"pretrained={source.spec}: no {regression.name} beside {path.name}: the contact head is zero "
             "(every probability 0.5) until fitted (evaluate.py contacts=true)")
    return _converted(kwargs, out, untrained)


# --- shared --------------------------------------------------------------------------------------------------


def _legacy_norm(key: str) -> str:
    """LayerNorm tensors as TensorFlow named them (`gamma` / `beta`): transformers 5 writes ESM's `LayerNorm`s so."""
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _strip(key: str) -> str:
    for prefix in FAIR_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _pair(ref: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """A module's weight and bias under `src` renamed to `dst` (none if the source lacks it)."""
    return {f"{dst}.{k}": ref[f"{src}.{k}"] for k in ("weight", "bias") if f"{src}.{k}" in ref}


def _rotary(ref: dict[str, Tensor]) -> dict[str, Tensor]:
    """The checkpoint's rotary frequency table, used as stored (one per layer in older files: all equal)."""
    table = next((v for k, v in ref.items() if k.endswith(("rotary_embeddings.inv_freq", "rot_emb.inv_freq"))),
                 None)
    return {} if table is None else {"rope.inv_freq": table.float()}


def _lm_head(ref: dict[str, Tensor], prefix: str, decoder: str, embed: Tensor) -> dict[str, Tensor]:
    """The masked-LM head; its output matrix must be the token embedding (ProteinLM ties them, as ESM does)."""
    if decoder in ref and not torch.equal(ref[decoder], embed):
        raise FileFormatError(f"{decoder} differs from the token embedding; ProteinLM ties them (as ESM-2 does)")
    out = {"head_bias": ref[f"{prefix}bias"]}
    for theirs, zoo in HEAD.items():
        out.update(_pair(ref, prefix + theirs, zoo))
    return out


def _fresh(kwargs: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    """The tensors under `prefix` of a freshly initialised ProteinLM of this width (a part the source lacks; one
    block: the LM head does not depend on the depth)."""
    return {k: v for k, v in ProteinLM(**{**kwargs, "depth": 1}).state_dict().items() if k.startswith(prefix)}


def _converted(kwargs: dict[str, Any], state: dict[str, Tensor], untrained: list[str]) -> Converted:
    preprocess: dict[str, Any] = {"modality": "protein"}
    if untrained:
        preprocess["untrained"] = untrained
    return Converted({"_target_": "models.protein.ProteinLM", **kwargs}, state, preprocess)
