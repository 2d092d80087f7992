"""ProteinLM converted from its references, against the references themselves with the same weights: transformers'
EsmForMaskedLM / EsmModel (an ESM-2 shaped tiny config, random weights, saved as a folder), fair-esm's ESM2
(saved in fair-esm's .pt layout) and AntiBERTy's real weights (the antiberty==0.1.3 wheel) in transformers'
BertForMaskedLM; and the alphabets against transformers' tokenizers."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

from models.attention import AttentionRecorder, fused_attn
from models.pretrained import convert, family
from models.pretrained.source import resolve
from models.protein_alphabet import ANTIBERTY_TOKENS, ESM_TOKENS, Alphabet

DIM, DEPTH, HEADS, FFN = 40, 2, 4, 64
ESM2_TINY = dict(vocab_size=33, hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                 intermediate_size=FFN, position_embedding_type="rotary", token_dropout=True,
                 emb_layer_norm_before=False, layer_norm_eps=1e-5, mask_token_id=32, pad_token_id=1,
                 max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# Trastuzumab (Herceptin) variable domains, heavy and light: public sequences (PDB 1N8Z, chains B and A; IMGT/mAb-DB).
TRASTUZUMAB_VH = ("EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYC"
                  "SRWGGDGFYAMDYWGQGTLVTVSS")
TRASTUZUMAB_VL = ("DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPT"
                  "FGQGTKVEIK")
_WHEEL = importlib.util.find_spec("antiberty")
ANTIBERTY = Path(_WHEEL.origin).parent / "trained_models" if _WHEEL and _WHEEL.origin else Path("/nonexistent")
needs_antiberty = pytest.mark.skipif(not ANTIBERTY.is_dir(), reason="antiberty is not installed "
                                     "(pip install --no-deps antiberty==0.1.3)")


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Weights of std 0.2 (peaked maps, logits of order 1), norms near 1 and biases near 0 but not equal to them
    (transformers starts them at 1 / 0, which would hide a swapped map)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name.lower() else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    return model.eval()


def batch(alphabet: Alphabet, seqs: list[str], masked: dict[int, list[int]] | None = None) -> torch.Tensor:
    """Padded (B, T) ids of `seqs`; masked: row -> residue positions (1-based) replaced by the mask token."""
    rows = [alphabet.encode(s) for s in seqs]
    ids = torch.full((len(rows), max(map(len, rows))), alphabet.pad)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        for j in (masked or {}).get(i, []):
            ids[i, j] = alphabet.mask
    return ids


ESM = Alphabet.named("esm")
SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ", "MVLSPADKTNVKAAWGKVGAHAGEYGA"]
MASKED = {0: [3, 9], 2: [1, 2, 20]}


@pytest.fixture(scope="module")
def esm_pair(tmp_path_factory: pytest.TempPathFactory):
    """(transformers EsmForMaskedLM, eager, in eval mode; the zoo's ProteinLM converted from its saved folder)."""
    torch.manual_seed(0)
    ref = randomize(EsmForMaskedLM(EsmConfig(**ESM2_TINY, attn_implementation="eager")))
    folder = tmp_path_factory.mktemp("esm2")
    ref.save_pretrained(folder)
    return ref, convert(str(folder)).build(), folder


def test_an_esm_folder_goes_to_the_esm_converter(esm_pair) -> None:
    _, net, folder = esm_pair
    assert family(resolve(str(folder))) == "esm"
    assert (net.name, net.task, net.alphabet.name, net.dim, net.depth) == ("protein", "unmask", "esm", DIM, DEPTH)


def test_esm_logits_and_hidden_states_equal_transformers(esm_pair) -> None:
    ref, net, _ = esm_pair
    ids = batch(ESM, SEQS, MASKED)  # padded, with <mask> tokens (token dropout rescales per sequence)
    real = ids.ne(ESM.pad)
    outputs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, o: outputs.append(o)) for b in net.blocks]
    with torch.no_grad():
        r = ref(ids, attention_mask=real.long(), output_hidden_states=True)
        with fused_attn(True):
            fused, hidden = net(ids), net.hidden(ids)
        with fused_attn(False):
            explicit = net(ids)
    for h in hooks:
        h.remove()
    assert (fused - r.logits)[real].abs().max() <= 1e-4
    assert (explicit - r.logits)[real].abs().max() <= 1e-4
    assert (hidden - r.hidden_states[-1])[real].abs().max() <= 1e-4  # after the final norm
    for got, want in zip(outputs[: DEPTH - 1], r.hidden_states[1:-1]):  # each block's output
        assert (got - want)[real].abs().max() <= 1e-4


def test_every_esm_attention_map_equals_transformers_under_the_fused_kernel(esm_pair) -> None:
    ref, net, _ = esm_pair
    ids = batch(ESM, SEQS, MASKED)
    with torch.no_grad():
        expected = ref(ids, attention_mask=ids.ne(ESM.pad).long(), output_attentions=True).attentions
        with fused_attn(True), AttentionRecorder(net) as rec:
            net(ids)
    assert list(rec.maps) == [f"blocks.{i}.attn" for i in range(DEPTH)]
    for got, want in zip(rec.maps.values(), expected):
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-5


def test_esm_contacts_equal_predict_contacts(esm_pair) -> None:
    ref, net, _ = esm_pair
    ids = batch(ESM, SEQS, MASKED)
    with torch.no_grad():
        expected = ref.predict_contacts(ids, ids.ne(ESM.pad).long())
        with fused_attn(True):
            got = net.contacts(ids)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5


def test_the_checkpoints_rotary_table_is_used_as_stored(tmp_path: Path) -> None:
    """ESM-2's hub files store the frequency table (rounded): the converted model uses it, not a recomputed one."""
    torch.manual_seed(1)
    ref = randomize(EsmForMaskedLM(EsmConfig(**ESM2_TINY, attn_implementation="eager")))
    with torch.no_grad():
        ref.esm.rotary_embeddings.inv_freq.mul_(1.3)  # far from the computed table: a recomputed one fails
    ref.save_pretrained(tmp_path)
    net = convert(str(tmp_path)).build()
    ids = batch(ESM, SEQS[:1])
    with torch.no_grad():
        assert (net(ids) - ref(ids).logits).abs().max() <= 1e-4
    assert torch.equal(net.rope.inv_freq, ref.esm.rotary_embeddings.inv_freq)


def test_esm_alphabet_equals_the_esm_tokenizer(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(ESM_TOKENS) + "\n")
    tokenizer = EsmTokenizer(vocab_file=str(vocab))
    for seq in ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY", "XBUZOMK"]:
        assert ESM.encode(seq) == tokenizer(seq)["input_ids"], seq
    assert tokenizer.convert_tokens_to_ids("<mask>") == ESM.mask and tokenizer.pad_token_id == ESM.pad


# --- fair-esm's .pt layout ----------------------------------------------------------------------------------


def fair_esm_files(folder: Path, regression: bool = True, seed: int = 3) -> tuple[torch.nn.Module, Path]:
    """fair-esm's ESM2 (2 layers, random weights) saved as its esm2_*.pt files: model_data['model'] with the
    `encoder.sentence_encoder.` / `encoder.` prefixes upgrade_state_dict strips, model_data['cfg']['model'] an
    argparse.Namespace; the contact regression in the sibling -contact-regression.pt."""
    from esm.model.esm2 import ESM2

    torch.manual_seed(seed)
    ref = randomize(ESM2(num_layers=DEPTH, embed_dim=DIM, attention_heads=HEADS, alphabet="ESM-1b",
                         token_dropout=True))
    state = ref.state_dict()
    model = {("encoder." if k.startswith("lm_head.") else "encoder.sentence_encoder.") + k: v
             for k, v in state.items() if not k.startswith("contact_head.")}
    cfg = argparse.Namespace(encoder_layers=DEPTH, encoder_embed_dim=DIM, encoder_ffn_embed_dim=4 * DIM,
                             encoder_attention_heads=HEADS, token_dropout=True, max_positions=1024)
    path = folder / "esm2_t2_tiny.pt"
    torch.save({"model": model, "cfg": {"model": cfg}, "args": None}, path)
    if regression:
        torch.save({"model": {k: v for k, v in state.items() if k.startswith("contact_head.")}},
                   folder / "esm2_t2_tiny-contact-regression.pt")
    return ref, path


def test_a_fair_esm_file_converts_with_trust_and_equals_fair_esm(tmp_path: Path) -> None:
    ref, path = fair_esm_files(tmp_path)
    assert family(resolve(str(path))) == "esm"
    conv = convert(str(path), trust_pickle=True)
    assert "untrained" not in conv.preprocess
    net = conv.build()
    ids = batch(ESM, SEQS, MASKED)
    real = ids.ne(ESM.pad)
    with torch.no_grad():
        out = ref(ids, return_contacts=True)  # maps (B, layers, heads, T, T), padding rows and columns zeroed
        with fused_attn(True):
            with AttentionRecorder(net) as rec:
                got = net(ids)
            got_contacts = net.contacts(ids)
    assert (got - out["logits"])[real].abs().max() <= 1e-4
    assert (got_contacts - out["contacts"]).abs().max() <= 1e-5
    for i, got_map in enumerate(rec.maps.values()):
        assert ((got_map - out["attentions"][:, i]) * real[:, None, :, None]).abs().max() <= 1e-5


# --- AntiBERTy (real weights) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def antiberty_pair():
    """(transformers BertForMaskedLM with AntiBERTy's bert.* and cls.predictions.* tensors, the zoo's model)."""
    import json

    from transformers import BertConfig, BertForMaskedLM

    folder = ANTIBERTY / "AntiBERTy_md_smooth"
    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
              if k not in ("architectures", "_name_or_path", "transformers_version")}
    ref = BertForMaskedLM(BertConfig(**config, attn_implementation="eager")).eval()
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    missing, _ = ref.load_state_dict({k: v for k, v in state.items() if k.startswith(("bert.", "cls.predictions."))},
                                     strict=False)
    assert not missing
    return ref, convert("pkg:antiberty").build()


@needs_antiberty
def test_antiberty_vocab_and_tokenizer_equal_the_alphabet() -> None:
    from transformers import BertTokenizer

    vocab = ANTIBERTY / "vocab.txt"
    assert tuple(vocab.read_text().split()) == ANTIBERTY_TOKENS
    # antiberty's runner builds BertTokenizer(vocab_file=...), which transformers 5 ignores (every residue then
    # reads [UNK]); from the folder it reads the same vocab.txt
    tokenizer = BertTokenizer.from_pretrained(str(ANTIBERTY), do_lower_case=False)
    alphabet = Alphabet.named("antiberty")
    for seq in (TRASTUZUMAB_VH, TRASTUZUMAB_VL):
        assert alphabet.encode(seq) == tokenizer(" ".join(seq))["input_ids"]


@needs_antiberty
def test_antiberty_equals_bert_for_masked_lm_on_trastuzumab(antiberty_pair) -> None:
    ref, net = antiberty_pair
    alphabet = net.alphabet
    ids = batch(alphabet, [TRASTUZUMAB_VH, TRASTUZUMAB_VL], {0: [5, 50], 1: [30]})  # the light chain padded
    real = ids.ne(alphabet.pad)
    with torch.no_grad():
        r = ref(ids, attention_mask=real.long(), output_hidden_states=True, output_attentions=True)
        with fused_attn(True):
            logits, hidden = net(ids), net.hidden(ids)
            with AttentionRecorder(net) as rec:
                net(ids)
    assert (logits - r.logits)[real].abs().max() <= 1e-4
    assert (hidden - r.hidden_states[-1])[real].abs().max() <= 1e-4
    keep = real[:, None, :, None]  # query rows of residues (pad rows differ: the zoo zeroes pad embeddings)
    for got, want in zip(rec.maps.values(), r.attentions):
        assert ((got - want) * keep).abs().max() <= 1e-4
    assert (net.contact_head.weight == 0).all()  # no regression in AntiBERTy: fitted later


def test_hf_esm2_id_is_read_from_the_cache_offline(esm_pair, tmp_path: Path, monkeypatch) -> None:
    """`hf:facebook/esm2_t6_8M_UR50D` as a user who downloaded it once has it (here the tiny model under that id)."""
    from huggingface_hub import constants

    from helpers.pretrained import fake_hub_cache

    ref, net, folder = esm_pair
    fake_hub_cache(tmp_path, "facebook/esm2_t6_8M_UR50D", [p for p in folder.iterdir() if p.is_file()])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = convert("hf:facebook/esm2_t6_8M_UR50D").build()
    ids = batch(ESM, SEQS, MASKED)
    with torch.no_grad():
        assert torch.equal(cached(ids), net(ids))
