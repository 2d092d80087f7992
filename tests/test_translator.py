"""Translator: masks, cached decoding, beam search, tokenizer, data splits and loaders."""

from __future__ import annotations

import math
import shutil

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from data.bible import clean_osis, load_bible, parse_export
from data.phrases import generate_phrases
from data.text import BucketBatchSampler, TranslationDataModule, read_tsv, split_of
from models.embeddings import sinusoidal_table
from training.seq2seq import text_metrics
from models.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, decode, encode, train_tokenizer
from models.translator import Translator
from helpers.beam import reference_beam
from utils.checkpoint import average_checkpoints


def tiny(vocab: int = 23, **kw) -> Translator:
    torch.manual_seed(0)
    args = dict(dim=32, encoder_depth=2, decoder_depth=2, num_heads=4, max_len=32, drop=0.0)
    return Translator(vocab, **{**args, **kw}).double().eval()


def random_src(vocab: int = 23, batch: int = 5, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, vocab, (batch, length), generator=g)
    src[1, 4:] = PAD_ID  # a shorter sentence in the batch
    return src


# --- model -------------------------------------------------------------------------------------------
def test_sinusoidal_table_matches_the_paper_formula() -> None:
    table = sinusoidal_table(10, 8)
    pos, i = 7, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


def test_source_padding_does_not_change_the_output() -> None:
    model, src = tiny(), random_src()
    tgt = torch.randint(4, 23, (5, 6))
    padded = F.pad(src, (0, 5), value=PAD_ID)
    assert torch.allclose(model(src, tgt), model(padded, tgt), atol=1e-10)


def test_decoder_is_causal() -> None:
    model, src = tiny(), random_src()
    tgt = torch.randint(4, 23, (5, 6))
    changed = tgt.clone()
    changed[:, 4:] = 5
    a, b = model(src, tgt), model(src, changed)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-10)
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_cached_decoding_gives_the_uncached_logits_and_tokens() -> None:
    model, src = tiny(), random_src()
    memory, pad = model.encode(src)
    prefix = torch.randint(4, 23, (5, 9))
    full = model.decode(prefix, memory, pad)
    caches = model.new_caches()
    steps = torch.cat([model.decode(prefix[:, t:t + 1], memory, pad, caches) for t in range(9)], dim=1)
    assert torch.allclose(full, steps, atol=1e-10)
    for fused in (True, False):
        from models.attention import fused_attn

        with fused_attn(fused):
            assert torch.equal(model.greedy(src, 12, use_cache=True), model.greedy(src, 12, use_cache=False))
            assert torch.equal(model.beam_search(src, 3, 12, use_cache=True),
                               model.beam_search(src, 3, 12, use_cache=False))


def test_beam_of_one_is_greedy() -> None:
    model, src = tiny(), random_src()
    assert torch.equal(model.beam_search(src, 1, 15, length_penalty=0.0), model.greedy(src, 15))


def test_batched_beam_search_matches_a_plain_reference() -> None:
    model = tiny(vocab=11)
    with torch.no_grad():  # make EOS likely so that hypotheses of different lengths compete
        model.head.weight[EOS_ID] += 0.05
    src = random_src(vocab=11, batch=3)
    got = model.beam_search(src, beam_size=3, max_new_tokens=7, length_penalty=0.6)
    for b in range(3):
        ref = reference_beam(model, src[b][src[b] != PAD_ID], k=3, steps=7, alpha=0.6)
        row = got[b].tolist()
        assert row[: len(ref)] == ref[: len(row)] and all(t == PAD_ID for t in row[len(ref):])


def test_too_long_input_raises_with_the_limit() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="max_len=32"):
        model(torch.randint(4, 23, (1, 40)), torch.randint(4, 23, (1, 3)))


# --- tokenizer, metrics --------------------------------------------------------------------------------
def test_tokenizer_round_trip_specials_and_unknown_characters() -> None:
    texts = ["Monday, March 3, 2025", "Montag, 3. März 2025", "12,345.67 km", "12.345,67 km"] * 20
    tok = train_tokenizer(texts, 120)
    assert [tok.token_to_id(s) for s in ("[PAD]", "[UNK]", "[BOS]", "[EOS]")] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    for text in texts[:4]:
        assert decode(tok, encode(tok, text, 64)) == text
    assert all(len(t) <= 2 for t in tok.encode("2025").tokens)  # digits one by one
    ids = encode(tok, "Montag ☃ 7", 64)  # a snowman was never seen: [UNK], no exception
    assert UNK_ID in ids
    assert decode(tok, ids + [EOS_ID, 9, 9]) == decode(tok, ids)  # decoding stops at EOS
    assert len(encode(tok, "1 2 3 4 5 6 7 8 9", 5)) == 5  # documented truncation


def test_text_metrics_agree_with_sacrebleu() -> None:
    hyps, refs = ["3. März 2025", "am Montag", "vor 2 Tagen"], ["3. März 2025", "am Dienstag", "vor 2 Tagen"]
    m = text_metrics(hyps, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert m["exact"] == pytest.approx(200 / 3)
    assert text_metrics(refs, refs)["bleu"] == pytest.approx(100.0)


def test_checkpoint_averaging(tmp_path) -> None:
    for i, value in enumerate([1.0, 2.0, 6.0]):
        torch.save({"state_dict": {"w": torch.full((2,), value), "n": torch.tensor(i)}},
                   tmp_path / f"epoch{i:03d}.ckpt")
    avg, used = average_checkpoints(tmp_path / "epoch002.ckpt", 2)
    assert [p.name for p in used] == ["epoch001.ckpt", "epoch002.ckpt"]
    assert torch.equal(avg["w"], torch.full((2,), 4.0)) and avg["n"].item() == 2
    with pytest.raises(ValueError, match="keep_epoch_checkpoints"):
        average_checkpoints(tmp_path / "epoch002.ckpt", 5)


# --- data -----------------------------------------------------------------------------------------------
def test_phrases_are_real_cldr_translations_and_deterministic() -> None:
    pairs = generate_phrases("de", 300, seed=3)
    assert pairs == generate_phrases("de", 300, seed=3)
    assert len({s for s, _ in pairs}) == 300
    import datetime as dt

    from babel import dates

    # One rendering checked against Babel directly: the generator adds nothing of its own.
    assert dates.format_date(dt.date(2021, 3, 4), "long", locale="de") == "4. März 2021"
    months = [t for s, t in pairs if s.split()[0] in ("January", "March", "December") and "," in s]
    assert months, "expected some dates in 300 phrases"
    with pytest.raises(ValueError, match="target_lang 'zz-nope'"):
        generate_phrases("zz-nope", 5)


def test_held_out_phrases_never_occur_in_training(tmp_path) -> None:
    dm = TranslationDataModule(root=str(tmp_path), num_pairs=2000, bpe_vocab_size=300, val_fraction=0.05,
                               test_fraction=0.05)
    train = {p.source for p in dm.splits["train"]}
    held = [p.source for p in dm.splits["test"] + dm.splits["val"]]
    assert held and not train.intersection(held)
    assert 50 < len(dm.splits["test"]) < 150  # ~5 % of 2000
    assert split_of("Monday", 0.05, 0.05) == split_of("Monday", 0.05, 0.05)
    # The tokenizer is saved as the data module's state and restored exactly.
    state = dm.state_dict()
    other = TranslationDataModule(root=str(tmp_path), num_pairs=2000, bpe_vocab_size=50, vocab_size=dm.vocab_size)
    other.load_state_dict(state)
    assert other.prepare_tokenizer().to_str() == dm.prepare_tokenizer().to_str()


def test_bucket_sampler_shards_like_a_distributed_sampler() -> None:
    from torch.utils.data import DistributedSampler, SequentialSampler

    lengths = [(i * 7919) % 37 + 1 for i in range(1003)]  # 1003: odd, so the two shares need one padded index
    data = list(range(len(lengths)))

    def batches(sampler, epoch: int, shuffle: bool = True) -> list[list[int]]:
        b = BucketBatchSampler(sampler, 16, drop_last=False, lengths=lengths, seed=3, shuffle=shuffle)
        b.set_epoch(epoch)
        return list(b)

    one = batches(SequentialSampler(data), 0)
    assert sorted(i for b in one for i in b) == data and len(one) == -(-len(data) // 16)
    assert one == batches(SequentialSampler(data), 0) and one != batches(SequentialSampler(data), 1)
    # within a pool of 50 batches the batches are sorted runs: little padding
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in one)
    assert pad < 0.05 * sum(lengths)
    # two processes: disjoint shares (apart from the one padded repeat) that together cover everything,
    # the same number of batches on each (else DDP's all-reduce would wait forever)
    shares = [batches(DistributedSampler(data, num_replicas=2, rank=r, shuffle=False), 4) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == -(-502 // 16)
    seen = [i for share in shares for b in share for i in b]
    assert sorted(set(seen)) == data and len(seen) == len(data) + 1
    assert [i for b in shares[1] for i in b if i % 2 == 0] == [0]  # rank 1: odd indices + the padded repeat
    # training under DDP: Lightning's sampler shuffles, a new share per process every epoch, still disjoint
    shuffled = [[batches(DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0), e) for r in (0, 1)]
                for e in (0, 1)]
    for epoch in shuffled:
        assert len(epoch[0]) == len(epoch[1]) and len({i for share in epoch for b in share for i in b}) == len(data)
    assert {i for b in shuffled[0][0] for i in b} != {i for b in shuffled[1][0] for i in b}
    # evaluation order (shuffle=False) is fixed: sorted by length within pools, whatever the epoch
    assert batches(SequentialSampler(data), 0, shuffle=False) == batches(SequentialSampler(data), 5, shuffle=False)


def test_tsv_reader_names_the_malformed_line(tmp_path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("Hello.\tHallo.\t#123 attribution\n\nThank you.\tDanke.\n", encoding="utf-8")
    assert [(p.source, p.target) for p in read_tsv(good)] == [("Hello.", "Hallo."), ("Thank you.", "Danke.")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Hello.\tHallo.\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 'source<TAB>target'"):
        read_tsv(bad)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_tsv(tmp_path / "missing.tsv")


def test_osis_cleaning_and_verse_parsing() -> None:
    assert clean_osis("<w>God</w><w>created</w> only born<w>Son</w>, <note>a footnote</note>it.") == \
        "God created only born Son, it."
    out = ("A Psalm by David.  Psalms 3:1: <w>Yahweh</w>, how!<milestone type=\"line\"/>\n"
           "Psalms 3:2: <w>Many</w> say\nmore.<milestone/>\n(engWEB2015eb)\n")
    assert parse_export(out) == {"Psalms 3:1": "Yahweh, how!", "Psalms 3:2": "Many say more."}


@pytest.mark.skipif(shutil.which("diatheke") is None, reason="diatheke not installed (apt-get install diatheke "
                    "sword-text-web sword-text-sparv)")
def test_bible_loader_aligns_real_verses(tmp_path) -> None:
    rows = load_bible(tmp_path, books=("Ruth",))
    verses = {k: (en, es) for k, en, es in rows}
    assert len(rows) == 85  # Ruth has 85 verses in both translations
    en, es = verses["Ruth 1:16"]
    assert "your people will be my people" in en.lower() and "tu pueblo será mi pueblo" in es.lower()
    assert all("<" not in en + es for en, es in verses.values())
    assert load_bible(tmp_path, books=("Ruth",)) == rows  # the cached copy reads back the same


# --- end to end -------------------------------------------------------------------------------------------
def test_train_evaluate_average_and_predict_from_the_command_line(tmp_path) -> None:
    import json

    from helpers.cli import command, run

    folder = tmp_path / "run"
    tiny_run = ["model=translator", "data.num_pairs=1500", "data.bpe_vocab_size=200", "model.net.dim=32",
                "model.net.encoder_depth=1", "model.net.decoder_depth=1", "model.max_new_tokens=12",
                "trainer.max_epochs=2", "trainer.limit_train_batches=3", "keep_epoch_checkpoints=2",
                f"paths.data_dir={tmp_path / 'datasets'}"]
    run("train.py", *tiny_run, f"hydra.run.dir={folder}")
    trained = json.loads((folder / "metrics.json").read_text())
    assert {"test/bleu", "test/chrf", "test/exact", "test/acc"} <= trained.keys()
    assert (folder / "tokenizer.json").is_file()
    assert sorted(p.name for p in (folder / "checkpoints").glob("epoch*.ckpt")) == ["epoch000.ckpt", "epoch001.ckpt"]

    # evaluate rebuilds the model with the checkpoint's own tokenizer and reproduces the test metrics.
    run("evaluate.py", f"ckpt_path={folder}", "save_attention=1", f"paths.data_dir={tmp_path / 'datasets'}",
        f"hydra.run.dir={tmp_path / 'ev'}")
    assert len(list((tmp_path / "ev" / "attention").glob("test000_*attention.png"))) == 2  # cross + encoder
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("test/bleu", "test/chrf", "test/acc"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    run("evaluate.py", f"ckpt_path={folder}", "average_last=2", f"paths.data_dir={tmp_path / 'datasets'}",
        f"hydra.run.dir={tmp_path / 'avg'}")
    assert "test/bleu" in json.loads((tmp_path / "avg" / "metrics.json").read_text())

    proc = run("predict.py", str(folder), "Monday, March 3, 2025", "--beam-size", "2",
               "--attention-dir", str(tmp_path / "pics"))
    assert proc.stdout.strip() and "error" not in proc.stderr.lower()
    assert sorted(p.name for p in (tmp_path / "pics").glob("*.png")) == [
        "000_Monday_March_3_2025_cross_attention.png", "000_Monday_March_3_2025_encoder_attention.png"]
    proc = command("predict.py", str(folder), "   ")
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_bible_without_diatheke_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install diatheke sword-text-web sword-text-sparv"):
        load_bible(tmp_path, books=("Ruth",))
