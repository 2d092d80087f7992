"""AntiBERTy (Ruffolo et al. 2021, the `antiberty==0.1.3` wheel: `pkg:antiberty`) -> models.protein.ProteinLM.

The wheel ships `trained_models/AntiBERTy_md_smooth/{config.json,pytorch_model.bin}` and `trained_models/vocab.txt`:
a BERT (8 layers, 512 wide, 8 heads, learned positions, post-norm, eps 1e-12) under `bert.`, and heads under
`cls.`. Kept: the BERT and its masked-LM head (`cls.predictions`, output matrix tied to the token embedding).
Dropped: the pooler and the species / chain / graft classifiers (`cls.species`, `cls.chain`, `cls.graft`: the
zoo's model predicts residues). AntiBERTy has no contact regression: the contact head is zero (every probability
0.5), marked `preprocess["untrained"] = ["contact_head"]`, until fitted by the contacts protocol.

The pin: antiberty 1.0.0 downloads its weights at run time; 0.1.3 carries them in the wheel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.pretrained import Converted, hf_activation, read_json, read_weights
from models.pretrained.bert import map_weights
from models.pretrained.source import Source
from models.protein_alphabet import ANTIBERTY_TOKENS
from utils.errors import FileFormatError, MissingFileError, note

MODEL = "AntiBERTy_md_smooth"
# TextEncoder's names (models.pretrained.bert.map_weights) -> ProteinLM's
RENAME = {"word_embed.": "tok_embed.", "encoder.blocks.": "blocks."}


def model_folder(src: Source) -> Path | None:
    """The AntiBERTy model folder of a source: the package (`pkg:antiberty` resolves to its `model/` code
    folder), its `trained_models/`, or the model folder itself; None if it is none of them."""
    base = src.path if src.path.is_dir() else src.path.parent
    for folder in (base, base / "trained_models" / MODEL, base.parent / "trained_models" / MODEL,
                   base / MODEL):
        config = folder / "config.json"
        if config.is_file() and read_json(config).get("architectures") == ["AntiBERTy"]:
            return folder
    return None


def accepts(src: Source, config: dict) -> bool:
    return model_folder(src) is not None


def check_vocab(folder: Path, spec: str) -> None:
    """AntiBERTy's vocab.txt must list the zoo's antiberty alphabet in its order (ids are positions)."""
    vocab = next((p for p in (folder / "vocab.txt", folder.parent / "vocab.txt") if p.is_file()), None)
    if vocab is None:
        raise MissingFileError(f"pretrained={spec!r}: no vocab.txt beside {folder} (AntiBERTy's token list)")
    tokens = tuple(vocab.read_text().split())
    if tokens != ANTIBERTY_TOKENS:
        raise FileFormatError(f"pretrained={spec!r}: {vocab} lists {' '.join(tokens)}; expected AntiBERTy's "
                              f"{' '.join(ANTIBERTY_TOKENS)}")


def net_kwargs(config: dict[str, Any], spec: str) -> dict[str, Any]:
    """AntiBERTy's BertConfig (as a dict) -> ProteinLM arguments."""
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise FileFormatError(f"pretrained={spec!r}: position_embedding_type="
                              f"{config['position_embedding_type']!r}; expected 'absolute' (AntiBERTy's)")
    if int(config["vocab_size"]) != len(ANTIBERTY_TOKENS):
        raise FileFormatError(f"pretrained={spec!r}: vocab_size={config['vocab_size']}; expected AntiBERTy's 25")
    return dict(alphabet="antiberty", dim=int(config["hidden_size"]), depth=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]), ffn_dim=int(config["intermediate_size"]),
                max_len=int(config["max_position_embeddings"]), positions="learned", token_dropout=False,
                norm_first=False, embed_norm=True, final_norm=False,
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                norm_eps=float(config.get("layer_norm_eps", 1e-12)), act=hf_activation(config, spec))


def map_state(ref: dict[str, Tensor], depth: int, heads: int) -> dict[str, Tensor]:
    """AntiBERTy's state dict -> ProteinLM's: the BERT as the zoo's BERT map reads it, the masked-LM head, a zero
    contact head (depth * heads features)."""
    out = {}
    for key, value in map_weights(ref, depth).items():
        for old, new in RENAME.items():
            key = key.replace(old, new, 1) if key.startswith(old) else key
        out[key] = value
    head = "cls.predictions."
    if not torch.equal(ref[f"{head}decoder.weight"], out["tok_embed.weight"]):
        raise FileFormatError(f"{head}decoder.weight differs from the token embedding; ProteinLM ties them")
    out["head_bias"] = ref[f"{head}bias"]
    for part in ("weight", "bias"):
        out[f"head_dense.{part}"] = ref[f"{head}transform.dense.{part}"]
        out[f"head_norm.{part}"] = ref[f"{head}transform.LayerNorm.{part}"]
    out["contact_head.weight"] = torch.zeros(1, depth * heads)
    out["contact_head.bias"] = torch.zeros(1)
    return out


def convert(source: Source) -> Converted:
    """`pkg:antiberty` (or its model folder) -> Converted: ProteinLM with the antiberty alphabet."""
    folder = model_folder(source)
    assert folder is not None  # accepts() found it
    check_vocab(folder, source.spec)
    kwargs = net_kwargs(read_json(folder / "config.json"), source.spec)
    ref = read_weights(Source(source.spec, source.kind, folder))
    state = map_state(ref, kwargs["depth"], kwargs["num_heads"])
    note(f"pretrained={source.spec}: AntiBERTy's species / chain / graft classifiers are dropped, and it has no "
         "contact regression: the contact head is zero (every probability 0.5) until fitted "
         "(evaluate.py contacts=true)")
    return Converted({"_target_": "models.protein.ProteinLM", **kwargs}, state,
                     {"modality": "protein", "untrained": ["contact_head"]})
