"""OPUS-MT / Marian in the zoo's Translator against transformers' MarianMTModel with the same (tiny, random)
weights, saved with save_pretrained: logits, greedy and beam-4 tokens of `generate`, attention maps, tokenizer."""

from __future__ import annotations

import pytest
import torch

from helpers.marian_tiny import TEXT, make_tiny_marian
from models.attention import attention_maps, fused_attn

pytest.importorskip("sentencepiece")


def _build(folder, **kw):
    from transformers import MarianMTModel
    from transformers import MarianTokenizer as Reference

    from models.pretrained.marian import load_marian

    make_tiny_marian(folder, **kw)
    torch.set_num_threads(1)
    net, tokenizer, kwargs, settings = load_marian(str(folder))
    ref = MarianMTModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    ref_tok = Reference(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"))
    batch = ref_tok(TEXT, padding=True, return_tensors="pt")
    return folder, net, tokenizer, settings, ref, ref_tok, batch


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """Weights of a trained model's scale (std 0.2): logits and maps."""
    return _build(tmp_path_factory.mktemp("marian"), init_std=0.2)


@pytest.fixture(scope="module")
def marian_decoding(tmp_path_factory):
    """Larger weights (std 1) and a likelier EOS: decodings that depend on the input, some ending early, some at
    the length limit. (Logits up to about 25 here: the fused kernel's rounding, 6e-4 in HF's own SDPA vs eager
    too, is why logits are compared on the std 0.2 model.)"""
    return _build(tmp_path_factory.mktemp("marian_decoding"), init_std=1.0, eos_bias=8.0)


def _trim(ids: torch.Tensor, pad: int) -> torch.Tensor:
    """Drop trailing all-pad columns (HF crops to the longest best hypothesis; so does the zoo)."""
    keep = ids.ne(pad).any(0).nonzero()
    return ids[:, : int(keep.max()) + 1] if len(keep) else ids[:, :0]


@torch.no_grad()
def test_logits_match_marian_mt_model(marian) -> None:
    _, net, _, _, ref, _, batch = marian
    src, mask = batch["input_ids"], batch["attention_mask"]
    assert not bool(mask.all())  # padded sources
    g = torch.Generator().manual_seed(0)
    tgt = torch.randint(2, net.vocab_size - 1, (len(TEXT), 9), generator=g)
    tgt[:, 0] = net.bos_id  # decoder start = pad, a real token here
    with fused_attn(True):
        logits = net(src, tgt)
    expected = ref(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    diff = (logits - expected).abs().max().item()
    assert diff <= 1e-4, diff


@torch.no_grad()
def test_greedy_and_beam_tokens_equal_generate(marian_decoding) -> None:
    _, net, _, settings, ref, _, batch = marian_decoding
    src = batch["input_ids"]
    assert settings["beam_size"] == 4 and settings["length_norm"] == "hf" and settings["forced_eos"]
    extra = dict(banned=tuple(settings["banned_tokens"]), forced_eos=True)
    greedy = net.greedy(src, settings["max_new_tokens"], **extra)
    beam = net.beam_search(src, 4, settings["max_new_tokens"], settings["length_penalty"], length_norm="hf",
                           renormalize=settings["renormalize_logits"], **extra)
    ref_greedy = ref.generate(**batch, num_beams=1)[:, 1:]  # the rest from generation_config.json
    ref_beam = ref.generate(**batch)[:, 1:]
    lengths = ref_beam.ne(net.pad_id).sum(1)
    assert lengths.min() < lengths.max() == settings["max_new_tokens"]  # early EOS and the length limit both occur
    assert torch.equal(_trim(greedy, net.pad_id), _trim(ref_greedy, net.pad_id))
    assert torch.equal(_trim(beam, net.pad_id), _trim(ref_beam, net.pad_id))
    for i in range(3):  # one sentence at a time too (no batch padding)
        one = batch["input_ids"][i:i + 1][:, : int(batch["attention_mask"][i].sum())]
        mine = net.beam_search(one, 4, settings["max_new_tokens"], settings["length_penalty"], length_norm="hf",
                               renormalize=True, **extra)
        assert torch.equal(mine, ref.generate(input_ids=one)[:, 1:])


@torch.no_grad()
def test_cross_and_decoder_self_attention_maps_equal_eager(marian) -> None:
    _, net, _, _, ref, _, batch = marian
    src, mask = batch["input_ids"], batch["attention_mask"]
    tgt = torch.full((len(TEXT), 6), 5)
    tgt[:, 0] = net.bos_id
    with fused_attn(True):
        _, maps = attention_maps(net, src, tgt, layers=["decoder.*"])
    out = ref(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_attentions=True)
    for i in range(len(net.decoder)):
        cross = (maps[f"decoder.{i}.cross_attn"] - out.cross_attentions[i]).abs().max().item()
        own = (maps[f"decoder.{i}.self_attn"] - out.decoder_attentions[i]).abs().max().item()
        assert cross <= 1e-5 and own <= 1e-5, (i, cross, own)


def test_tokenizer_encodes_and_decodes_like_marian_tokenizer(marian) -> None:
    from models.spm_tokenizer import MarianTokenizer

    _, _, tokenizer, _, _, ref_tok, _ = marian
    again = MarianTokenizer.from_str(tokenizer.to_str())  # as a checkpoint carries it
    for sentence in TEXT + ["Zwölf Äpfel, 3,5 kg — ¿qué?"]:
        expected = ref_tok(sentence)["input_ids"]
        assert tokenizer.encode(sentence).ids == expected == again.encode(sentence).ids
        assert tokenizer.decode(expected) == ref_tok.decode(expected, skip_special_tokens=True)


def test_predict_settings_follow_generation_config(marian_decoding) -> None:
    from inference.load import load

    folder, net, _, settings, ref, ref_tok, _ = marian_decoding
    p = load(str(folder)).predict(TEXT[0])
    out, text = p.ids, p.text
    expected = ref.generate(**ref_tok([TEXT[0]], return_tensors="pt"))[0, 1:].tolist()
    assert out == [t for t in expected if t != net.pad_id]
    assert text == ref_tok.decode(expected, skip_special_tokens=True)


def test_fine_tune_evaluate_and_predict_a_pretrained_translator(marian_decoding, tmp_path) -> None:
    import json

    from helpers.cli import run

    folder = marian_decoding[0]
    pairs = tmp_path / "pairs.tsv"
    en, de = TEXT[:9] + TEXT[18:], TEXT[9:18] + ["Guten Morgen!", "Es regnet wieder."]
    pairs.write_text("".join(f"{e} ({i})\t{d} ({i})\n" for i in range(30) for e, d in zip(en, de)))
    trained_run = tmp_path / "run"
    common = [f"paths.data_dir={tmp_path / 'ds'}", "threads=1"]
    run("train.py", "model=translator", f"pretrained={folder}", "data=tsv", f"data.path={pairs}",
        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=16", "model.max_new_tokens=8",
        f"hydra.run.dir={trained_run}", *common)
    trained = json.loads((trained_run / "metrics.json").read_text())
    # the checkpoint carries the architecture, the decoding rules and Marian's tokenizer: no source needed
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    run_cfg = ckpt["zoo_config"]
    assert run_cfg["preprocess"]["modality"] == "text" and run_cfg["model"]["length_norm"] == "hf"
    assert ckpt["TranslationDataModule"]["tokenizer"].startswith('{"marian"')
    run("evaluate.py", f"ckpt_path={trained_run}", f"hydra.run.dir={tmp_path / 'ev'}", *common)
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("test/loss", "test/bleu", "test/chrf"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    proc = run("predict.py", str(trained_run), TEXT[1], "--attention-dir", str(tmp_path / "pics"))
    assert len(list((tmp_path / "pics").glob("*.png"))) == 2 and "error" not in proc.stderr.lower()


def test_predict_on_a_marian_folder_translates_draws_writes_its_page_and_checks_options(
        marian_decoding, tmp_path, capsys, in_process) -> None:
    from helpers.pretrained import page_data
    from predict import main  # run in this test: in_process puts back whatever it changes process-wide

    folder, page = str(marian_decoding[0]), tmp_path / "page.html"
    assert main([folder, TEXT[0], "--attention-dir", str(tmp_path / "pics"), "--beam-size", "2", "--html",
                 str(page)]) == 0
    assert len(list((tmp_path / "pics").glob("*.png"))) == 2  # cross-attention and encoder self-attention
    text = page.read_text(encoding="utf-8")
    assert '"kind":"text"' in text and '"key":"cross"' in text and 'src="http' not in text
    groups = {g["key"]: g for g in page_data(page)["groups"]}
    assert set(groups) == {"encoder", "decoder", "cross"}
    cross = groups["cross"]  # (layers, heads, target tokens, source tokens)
    assert cross["maps"]["shape"] == [2, 4, len(cross["rows"]), len(cross["cols"])] and cross["rows"]
    assert main([folder, TEXT[0], "--layer", "2"]) == 2
    assert "--layer 2: this model has 2 layers there" in capsys.readouterr().err


@pytest.mark.parametrize(("early_stopping", "length_penalty"), [(True, 0.6), (False, 2.0)])
@torch.no_grad()
def test_beam_search_follows_generate_for_other_length_penalties_and_early_stopping(
        marian_decoding, early_stopping: bool, length_penalty: float) -> None:
    _, net, _, settings, ref, _, batch = marian_decoding
    mine = net.beam_search(batch["input_ids"], 4, settings["max_new_tokens"], length_penalty, length_norm="hf",
                           renormalize=True, banned=tuple(settings["banned_tokens"]), forced_eos=True,
                           early_stopping=early_stopping)
    theirs = ref.generate(**batch, early_stopping=early_stopping, length_penalty=length_penalty)[:, 1:]
    assert torch.equal(_trim(mine, net.pad_id), _trim(theirs, net.pad_id))
