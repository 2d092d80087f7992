"""Using and seeing a causal LM: prompt encoding, decoding options, stop strings, the maps of what was
generated (against attention_maps on the same ids), the sink / previous-token / induction numbers (against
hand-built maps whose answer is known), the pictures, the explorer page in headless Chromium, predict.py on a
tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, processors

from data.text_corpus import bpe_tokenizer, char_tokenizer
from inference.complete import Sampling, cut_at_stop, prompt_ids, repeated_random_tokens, shown_token
from inference.predictor import Predictor
from models.attention import attention_maps
from models.generate import generate
from models.lm import CausalLM
from viz.explorer import payload, render, unpack
from viz.maps import causal_views, induction_scores, previous_token_scores, sink_share
from viz.pictures import draw

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nAy me.\n"
TOL = 2e-5  # the page's uint16 storage


def causal_uniform(T: int) -> torch.Tensor:
    """(T, T): each query spreads its attention evenly over itself and the tokens before it."""
    return torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]


def test_sink_previous_token_and_induction_scores_of_hand_built_maps() -> None:
    n, start = 4, 1  # a BOS, then 4 random tokens twice: T = 9
    T = start + 2 * n
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(0, T - 1)] = 1  # every token looks at the one before it
    induction = causal_uniform(T).clone()
    for i in range(start + n, T):  # the second copy looks at the token after the earlier occurrence
        induction[i] = 0
        induction[i, i - n + 1] = 1
    sink = torch.zeros(T, T)
    sink[:, 0] = 1  # everything on token 0
    maps = torch.stack([torch.stack([prev, induction]), torch.stack([sink, causal_uniform(T)])])  # (2, 2, T, T)
    scores = previous_token_scores(maps, start)
    assert scores[0, 0] == 1 and scores[1, 0] == 0  # the sink head looks at token 1's predecessor only once
    # the uniform head: position i gives 1 / (i + 1) to i - 1, averaged over i = 2..T-1 (start=1 leaves i=1 out)
    expected = sum(1 / (i + 1) for i in range(2, T)) / (T - 2)
    assert scores[1, 1].item() == pytest.approx(expected)
    ind = induction_scores(maps, n, start)
    assert ind[0, 1] == 1 and ind[0, 0] == 0 and ind[1, 0] == 0
    assert ind[1, 1].item() == pytest.approx(sum(1 / (i + 1) for i in range(start + n, T)) / n)
    # the sink: mean over heads and over queries 1..T-1 of the weight on token 0
    sinks = sink_share(maps)
    assert sinks[1].item() == pytest.approx((1 + sum(1 / (i + 1) for i in range(1, T)) / (T - 1)) / 2)
    assert sinks[0].item() == pytest.approx((1 + induction[1:, 0].sum().item()) / (T - 1) / 2)  # prev: query 1 only
    with pytest.raises(ValueError, match="start \\+ 2 n"):
        induction_scores(maps, n + 1, start)


def test_causal_views_read_the_layers_in_order_and_the_chosen_heads() -> None:
    T = 6
    a, b = causal_uniform(T), torch.eye(T)
    maps = {f"blocks.{i}.attn": torch.stack([a, b])[None] for i in (10, 2)}
    views = causal_views(maps, maps, n=3, start=0, heads=[1])
    assert views.layers == ["blocks.2.attn", "blocks.10.attn"]
    assert torch.equal(views.per_layer[0], b) and views.sink.tolist() == [0.0, 0.0]
    assert views.previous.shape == views.induction.shape == (2, 2)  # every head, whatever `heads` shows


@pytest.fixture(scope="module")
def tiny() -> tuple[CausalLM, Tokenizer]:
    tok = char_tokenizer(TEXT)
    torch.manual_seed(0)
    return CausalLM(tok.get_vocab_size(), 32, dim=32, depth=2, num_heads=4).eval(), tok


def test_the_maps_are_those_of_the_generated_sequence_in_one_pass(tiny) -> None:
    net, tok = tiny
    p = Predictor(net, None, "test", tokenizer=tok).predict("ROMEO:", maps=True,
                                                           sampling=Sampling(max_new_tokens=12))
    prompt = tok.encode("ROMEO:").ids
    assert p.source_ids.tolist() == [prompt]
    assert p.ids == generate(net, [prompt], max_new_tokens=12)[0].tolist()  # greedy by default
    assert p.text == tok.decode(p.ids)
    _, expected = attention_maps(net, torch.tensor([prompt + p.ids]))
    assert sorted(p.maps) == sorted(expected) == ["blocks.0.attn", "blocks.1.attn"]
    for name, m in expected.items():
        torch.testing.assert_close(p.maps[name], m)
        assert torch.all(m[0].triu(1) == 0)  # causal: nothing on later tokens
    assert p.prompt_length == len(prompt) and len(p.context_tokens) == len(prompt) + 12
    assert p.context_tokens[:6] == ["R", "O", "M", "E", "O", ":"]
    # the induction run: n random ordinary tokens twice ([UNK] left out), its own maps
    assert p.repeat_length == 16 and p.repeat_start == 0
    seq = repeated_random_tokens(tok, net.vocab_size, 16)
    assert torch.equal(seq[0, :16], seq[0, 16:]) and 0 not in seq.tolist()
    _, rep = attention_maps(net, seq)
    torch.testing.assert_close(p.repeat_maps["blocks.1.attn"], rep["blocks.1.attn"])


def test_a_windowed_rotary_model_maps_its_band(tmp_path: Path) -> None:
    """Mistral's options (rotary, a sliding window, grouped KV heads): the rolling-cache decoding's tokens, and
    maps that are the band of the window."""
    tok = char_tokenizer(TEXT)
    torch.manual_seed(1)
    net = CausalLM(tok.get_vocab_size(), 32, dim=32, depth=2, num_heads=4, num_kv_heads=2, positions="rotary",
                   norm="rmsnorm", ffn="swiglu", bias=False, attn_window=4).eval()
    p = Predictor(net, None, "test", tokenizer=tok).predict("ROMEO:", maps=True, sampling=Sampling(max_new_tokens=10))
    prompt = tok.encode("ROMEO:").ids
    assert p.ids == generate(net, [prompt], max_new_tokens=10, use_cache=False)[0].tolist()
    _, expected = attention_maps(net, torch.tensor([prompt + p.ids]))
    torch.testing.assert_close(p.maps["blocks.0.attn"], expected["blocks.0.attn"])
    band = torch.tril(torch.ones(16, 16)) - torch.tril(torch.ones(16, 16), diagonal=-4)  # itself + 3 before
    assert torch.equal(p.maps["blocks.1.attn"][0] > 0, band.bool().expand(4, 16, 16))
    assert len(draw(p, tmp_path, "w")) == 3


def test_sampling_with_a_seed_repeats_and_options_reach_generate(tiny) -> None:
    net, tok = tiny
    pred = Predictor(net, None, "test", tokenizer=tok)
    options = Sampling(max_new_tokens=10, temperature=1.5, top_k=5, top_p=0.9, seed=3)
    a, b = (pred.predict("JULIET:", sampling=options) for _ in range(2))
    assert a.ids == b.ids
    g = torch.Generator().manual_seed(3)
    expected = generate(net, [tok.encode("JULIET:").ids], max_new_tokens=10, temperature=1.5, top_k=5,
                        top_p=0.9, generator=g)
    assert a.ids == expected[0].tolist()


def test_a_prompt_past_the_context_is_cut_from_the_left_and_generation_crops_like_nanogpt(tiny) -> None:
    net, tok = tiny
    notes: list[str] = []
    long = TEXT * 2
    ids = prompt_ids(tok, long, net.block_size, notes)
    assert ids == tok.encode(long).ids[-31:]  # a place left for the first new token
    assert "its first" in notes[0] and "it now starts" in notes[0]
    notes = []
    p = Predictor(net, None, "test", tokenizer=tok).predict("Ay", maps=True, notes=notes,
                                                           sampling=Sampling(max_new_tokens=40))
    assert len(p.ids) == 40 and any("last 31 tokens" in n for n in notes)
    # past the context, each token comes from the 31 before it (nanoGPT's crop)
    seq = tok.encode("Ay").ids + p.ids
    k = 38
    window = torch.tensor([seq[k - 31:k]])
    assert int(net(window)[0, -1].argmax()) == seq[k]
    assert len(p.context_tokens) == 32  # the maps: the last 32 tokens (the longest pass the model takes)


def test_past_the_context_a_bos_stays_in_front_of_the_window(tiny) -> None:
    net, tok = tiny
    from inference.complete import continue_ids

    bos, ids = 0, [0] + tok.encode("Ay").ids  # id 0 ([UNK]) stands in for a BOS the tokenizer added
    notes: list[str] = []
    new = continue_ids(net, ids, Sampling(max_new_tokens=40).resolved(), notes=notes, keep=1)
    assert any("predicted from the BOS and the last 30 tokens" in n for n in notes), notes
    seq = ids + new
    for k in range(net.block_size, len(seq)):  # each token past the context: from the BOS + the 30 before it
        window = torch.tensor([[bos] + seq[k - 30:k]])
        assert int(net(window)[0, -1].argmax()) == seq[k], k


def test_the_tokenizers_post_processor_decides_the_bos_and_a_cut_keeps_it() -> None:
    tok = char_tokenizer(TEXT)
    tok.add_special_tokens(["<s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    assert prompt_ids(tok, "Ay", 10) == [bos] + tok.encode("Ay", add_special_tokens=False).ids
    notes: list[str] = []
    cut = prompt_ids(tok, "ROMEO: But soft", 7, notes)
    assert cut == [bos] + tok.encode(" soft", add_special_tokens=False).ids and len(notes) == 1


def test_unknown_characters_are_said_replaced_or_dropped() -> None:
    notes: list[str] = []
    ids = prompt_ids(char_tokenizer(TEXT), "Ay ζ me", 64, notes)
    assert ids.count(0) == 1 and notes == ["1 character(s) of the prompt unknown to the tokenizer ('ζ') read as [UNK]"]
    notes = []
    assert prompt_ids(bpe_tokenizer(TEXT, 300), "Ay ζ me", 64, notes) and notes == []  # byte-level: none unknown
    from tokenizers import models
    bare = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, " ": 2}, merges=[]))  # no unknown token: it drops them
    assert prompt_ids(bare, "ab zq", 10, notes) == [0, 1, 2]
    assert notes == ["2 character(s) of the prompt unknown to the tokenizer ('zq') dropped"]


def test_stop_strings_cut_the_text_and_keep_the_tokens_up_to_the_stop() -> None:
    tok = char_tokenizer(TEXT)
    new = tok.encode("Ay me.\n\nJULIET:").ids
    kept, text, stop = cut_at_stop(tok, new, ["\n\n", "ET"])
    assert (text, stop) == ("Ay me.", "\n\n") and tok.decode(kept) == "Ay me.\n\n"
    assert cut_at_stop(tok, new, ["xyz"]) == (new, "Ay me.\n\nJULIET:", None)
    assert cut_at_stop(tok, new, [], eos_ids=[new[2]])[:2] == (new[:3], "Ay")  # an EOS ends it too
    # a Metaspace decoder drops the space of the text's first word: the continuation keeps it
    from tokenizers import decoders, models, pre_tokenizers
    sp = Tokenizer(models.WordLevel({"▁Ay": 0, "▁me": 1, "[UNK]": 2}, unk_token="[UNK]"))
    sp.pre_tokenizer, sp.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    assert sp.decode([1]) == "me" and cut_at_stop(sp, [1], [], prompt=[0])[1] == " me"


@pytest.mark.parametrize("options, message", [
    (Sampling(max_new_tokens=0), "--max-new-tokens 0: expected an integer >= 1"),
    (Sampling(max_new_tokens=-5), "--max-new-tokens -5: expected an integer >= 1"),
    (Sampling(temperature=-0.5), r"--temperature -0.5: expected 0 \(greedy\) or a finite number >= 1e-06"),
    (Sampling(top_k=5), "--top-k is for sampled decoding, but decoding is greedy"),
    (Sampling(temperature=0, top_p=0.9), "--top-p is for sampled decoding, but decoding is greedy"),
    (Sampling(temperature=1, top_p=1.5), r"--top-p 1.5: expected a probability in \(0, 1\]"),
    (Sampling(temperature=1, top_p=0), r"--top-p 0: expected a probability in \(0, 1\]"),
], ids=["new-0", "new-negative", "temperature", "top-k-greedy", "top-p-greedy", "top-p-high", "top-p-0"])
def test_decoding_options_are_checked(options: Sampling, message: str) -> None:
    from utils.errors import UserError

    with pytest.raises(UserError, match=message):
        options.resolved({})


def test_the_models_own_settings_fill_what_is_not_given() -> None:
    model = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 20}
    got = Sampling(top_k=5).resolved(model)  # a sampling model: --top-k alone is fine
    assert (got.temperature, got.top_k, got.top_p, got.max_new_tokens) == (0.7, 5, 0.9, 20)
    greedy = Sampling(temperature=0).resolved(model)
    assert (greedy.top_k, greedy.top_p) == (None, None)
    assert Sampling().resolved({}).max_new_tokens == 100 and not Sampling().resolved({}).sampled


def test_shown_tokens_escape_whitespace() -> None:
    assert [shown_token(t) for t in ("\n", " ", "a b", "\t")] == ["\\n", "␣", "a b", "\\t"]


def test_pictures_and_page_payload(tiny, tmp_path: Path) -> None:
    net, tok = tiny
    p = Predictor(net, None, "test", tokenizer=tok).predict("ROMEO:", maps=True,
                                                           sampling=Sampling(max_new_tokens=8))
    paths = draw(p, tmp_path, "romeo")
    assert [x.name for x in paths] == ["romeo_causal_attention.png", "romeo_sink.png", "romeo_heads.png"]
    assert all(x.stat().st_size > 10_000 for x in paths)
    data = payload(p, "ROMEO: -> ...")
    (group,) = data["groups"]
    assert group["rows"] == group["cols"] == p.context_tokens and group["boundary"] == 6
    np.testing.assert_allclose(unpack(group["maps"])[1], p.maps["blocks.1.attn"][0].numpy(), atol=TOL)
    assert data["prediction"] == {"text": p.text, "source": "ROMEO:", "label": "continuation"}


def test_the_explorer_page_loads_offline_and_shows_causal_rows(tiny, tmp_path: Path) -> None:
    from helpers.browser import Browser, not_blank

    net, tok = tiny
    p = Predictor(net, None, "test", tokenizer=tok).predict("ROMEO:", maps=True,
                                                           sampling=Sampling(max_new_tokens=8))
    path = tmp_path / "lm.html"
    path.write_text(render(payload(p, "ROMEO:")), encoding="utf-8")
    browser = Browser()
    try:
        page = browser.open(path.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        assert page.inner_text("#prompt") == "ROMEO:" and page.inner_text("#translation") == p.text
        assert page.locator(".col.left .tok.gen").count() == 8  # the continuation marked
        page.hover(".col.left .tok[data-i='3']")
        shown = json.loads(page.get_attribute("#readout", "data-weights"))
        for h, row in shown.items():
            np.testing.assert_allclose(row, p.maps["blocks.1.attn"][0, int(h), 3].numpy(), atol=TOL)
            assert all(v == 0 for v in row[4:])  # a token looks only at itself and earlier ones
        assert not_blank(page.screenshot())
        assert browser.errors == [], browser.errors
        assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests
    finally:
        browser.close()


def test_predict_py_on_a_tiny_trained_run_prints_pictures_and_page(tmp_path: Path, in_process, capsys) -> None:
    import predict
    from helpers.runs import train_in_process
    from inference.load import load

    run_dir = tmp_path / "run"
    train_in_process("lm", run_dir)
    capsys.readouterr()
    pictures, html = tmp_path / "pictures", tmp_path / "page.html"
    argv = [str(run_dir), "ROMEO:", "--max-new-tokens", "20", "--temperature", "0.9", "--top-k", "10", "--seed", "7",
            "--attention-dir", str(pictures), "--html", str(html), "--threads", "1"]
    assert predict.main(argv) == 0
    out = capsys.readouterr().out
    p = load(run_dir).predict("ROMEO:", sampling=Sampling(max_new_tokens=20, temperature=0.9, top_k=10, seed=7))
    assert out.startswith(f"ROMEO:{p.text}\n")  # the same seed, the same continuation
    assert sorted(x.name for x in pictures.iterdir()) == ["000_ROMEO_causal_attention.png", "000_ROMEO_heads.png",
                                                          "000_ROMEO_sink.png"]
    assert '"key":"causal"' in html.read_text(encoding="utf-8")
    # a stop string ends the continuation before it
    assert predict.main([str(run_dir), "ROMEO:", "--max-new-tokens", "30", "--stop", "e", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "e" not in printed[len("ROMEO:"):]
    # evaluate.py save_attention=N: a test block's first half continued, beside the text that followed it
    from helpers.cli import run

    done = run("evaluate.py", f"ckpt_path={run_dir}", "save_attention=1", "threads=1",
               f"hydra.run.dir={tmp_path / 'ev'}")
    drawn = sorted(x.name for x in (tmp_path / "ev" / "attention").iterdir())
    assert len(drawn) == 4 and drawn[0] == "test000.html" and "(reference: " in done.stdout
    assert "maps show the last" not in done.stderr  # continued as far as the reference: the prompt is drawn too
    # bench/passkey.py: a window gives the passkey position no weight from the last query
    from bench import passkey

    rows = passkey.main([str(run_dir), "--window", "4", "--sinks", "2", "--blocks", "3"])
    assert sorted(rows) == ["full", "window", "window + 2 sinks"]
    assert rows["window"]["attn_passkey"] == rows["window"]["attn_first"] == 0 < rows["full"]["attn_first"]
    assert rows["window + 2 sinks"]["attn_first"] > 0 and rows["window + 2 sinks"]["attn_passkey"] == 0


def test_the_app_tab_continues_a_prompt_like_the_predictor(tiny, tmp_path: Path) -> None:
    from app import build_app
    from helpers.app_server import served

    net, tok = tiny
    predictor = Predictor(net, None, "test", tokenizer=tok)
    with served(build_app([predictor], tmp_path), tmp_path) as client:
        message, shown, explorer, pictures = client.predict("  ", api_name="/lm")
        assert message == "error: the prompt is empty; type a prompt" and not shown
        message, shown, explorer, pictures = client.predict("ROMEO:", api_name="/lm")
        notes: list[str] = []
        assert shown == "ROMEO:" + predictor.predict("ROMEO:", maps=True, notes=notes).text
        # 100 new tokens past the 32-token context: predict.py's notes, in the message box
        assert message == "\n\n".join(f"note: {line}" for line in notes) and "more than the model's context" in message
        assert explorer.startswith("<iframe") and "causal self-attention" in explorer and len(pictures) == 3


def test_a_pretrained_folder_continues_with_its_bos_and_eos_and_draws(tmp_path: Path, in_process, capsys) -> None:
    """A tiny Llama saved by transformers: predict.py converts it, its tokenizer.json adds the BOS, decoding is
    transformers' greedy generate, the induction run starts after the BOS."""
    import predict
    from transformers import LlamaConfig, LlamaForCausalLM

    from helpers.browser import Browser  # noqa: F401  (the page itself is tested above)
    from inference.load import load
    from test_pretrained_lm import SMALL, tiny_tokenizer

    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2, max_position_embeddings=64)).eval()
    folder = tmp_path / "llama"
    ref.save_pretrained(folder)
    tiny_tokenizer(add_bos=True).save(str(folder / "tokenizer.json"))
    p = load(folder).predict("w5 w7 w9", maps=True, sampling=Sampling(max_new_tokens=6))
    assert p.source_ids.tolist() == [[1, 5, 7, 9]] and p.source_tokens[0] == "w1"
    expected = ref.generate(torch.tensor([[1, 5, 7, 9]]), max_new_tokens=6, do_sample=False, eos_token_id=2,
                            pad_token_id=2)[0, 4:].tolist()
    assert p.ids == expected[: expected.index(2) + 1] if 2 in expected else p.ids == expected
    assert p.repeat_start == 1 and p.prompt_length == 4
    pictures = tmp_path / "pictures"
    assert predict.main([str(folder), "w5 w7 w9", "--max-new-tokens", "6", "--attention-dir", str(pictures),
                         "--threads", "1"]) == 0
    assert len(list(pictures.glob("*.png"))) == 3
    # the continuation is what decode(prompt + new) adds to decode(prompt): the space between them kept
    assert capsys.readouterr().out.startswith("w5 w7 w9 " + " ".join(f"w{i}" for i in p.ids if i != 2))


def test_the_induction_check_bench_runs() -> None:
    from bench import induction_check

    report = induction_check.main(["--steps", "2", "--n", "6", "--threads", "1"])
    assert report["induction"].shape == report["previous"].shape == (2, 4) and report["loss"] > 0
