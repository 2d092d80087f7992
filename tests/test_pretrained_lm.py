"""GPT-2, Llama, Mistral and Qwen2 converted into models.lm.CausalLM, against transformers' own models with
the same random weights (tiny configs, built offline): logits, every attention map, greedy and seeded sampled
generation, and a folder's tokenizer and generation settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

from models.attention import AttentionRecorder, fused_attn
from models.pretrained import convert, family
from models.pretrained.source import resolve

VOCAB, BOS, EOS = 96, 1, 2
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
             bos_token_id=BOS, eos_token_id=EOS)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8}

FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                               bos_token_id=BOS, eos_token_id=EOS)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2, rope_theta=500.0,
                                                  rope_scaling=LLAMA3, max_position_embeddings=64)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=1, sliding_window=5,
                                                        rope_theta=1000.0)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2, tie_word_embeddings=True)),
}


def tiny_tokenizer(add_bos: bool) -> Tokenizer:
    """A word-level tokenizer over the words w0 ... w95 (Llama's BOS rule when `add_bos`)."""
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"w{BOS} $A", special_tokens=[(f"w{BOS}", BOS)])
    return tok


def perturb(model: torch.nn.Module) -> None:
    """Random norms and biases too (transformers starts them at 1 / 0, which would hide a swapped map), and
    weights 5x transformers' init: logits of order 1 and peaked attention, not near-uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name or "ln_" in name else 0.0) + 0.1 * torch.randn_like(p))
            else:
                p.mul_(5.0)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(family, transformers model in eval mode, the zoo's CausalLM converted from its saved folder, Converted)."""
    torch.manual_seed(0)
    ref = FAMILIES[request.param]()
    perturb(ref)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    tiny_tokenizer(add_bos=request.param != "gpt2").save(str(folder / "tokenizer.json"))
    conv = convert(str(folder))
    ref = type(ref).from_pretrained(folder, attn_implementation="eager").eval()
    return request.param, ref, conv.build(), conv


def test_each_folder_goes_to_its_converter(pair, tmp_path: Path) -> None:
    name, ref, net, conv = pair
    assert family(resolve(str(Path(ref.name_or_path)))) == ("gpt2" if name == "gpt2" else "llama")
    assert conv.net["_target_"] == "models.lm.CausalLM" and net.task == "complete"


def test_logits_equal_transformers(pair) -> None:
    name, ref, net, _ = pair
    ids = torch.randint(0, VOCAB, (2, 14))  # longer than Mistral's window of 5
    with torch.no_grad():
        expected = ref(ids).logits
        with fused_attn(True):
            fused = net(ids)
        with fused_attn(False):
            explicit = net(ids)
    assert (fused - expected).abs().max() <= 1e-4, name
    assert (explicit - expected).abs().max() <= 1e-4, name


def test_every_attention_map_equals_transformers(pair) -> None:
    name, ref, net, _ = pair
    ids = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        expected = ref(ids, output_attentions=True).attentions
        with fused_attn(True), AttentionRecorder(net) as rec:
            net(ids)
    maps = rec.maps
    assert list(maps) == ["blocks.0.attn", "blocks.1.attn"]
    for got, want in zip(maps.values(), expected):
        assert (got - want).abs().max() <= 1e-5, name


def test_greedy_tokens_equal_transformers_generate(pair) -> None:
    name, ref, net, conv = pair
    prompt = torch.randint(3, VOCAB, (1, 6))
    settings = {k: conv.module[k] for k in ("eos_ids", "pad_id")}
    with torch.no_grad():
        expected = ref.generate(prompt, do_sample=False, max_new_tokens=12, pad_token_id=settings["pad_id"])
    got = net.generate(prompt.tolist(), max_new_tokens=12, **settings)
    assert got[0].tolist() == expected[0, 6:].tolist(), name


def test_seeded_sampling_equals_transformers_generate(pair) -> None:
    name, ref, net, conv = pair
    prompt = torch.randint(3, VOCAB, (2, 5))
    sample = dict(temperature=0.7, top_k=20, top_p=0.9)
    settings = {k: conv.module[k] for k in ("eos_ids", "pad_id")}
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = ref.generate(prompt, do_sample=True, max_new_tokens=10, pad_token_id=settings["pad_id"],
                                    **sample)
        torch.manual_seed(seed)
        got = net.generate(prompt.tolist(), max_new_tokens=10, **settings, **sample)
        assert got.tolist() == expected[:, 5:].tolist(), (name, seed)


def test_prompts_of_different_lengths_batched_equal_one_by_one(pair) -> None:
    name, ref, net, conv = pair
    prompts = [torch.randint(3, VOCAB, (n,)).tolist() for n in (3, 7, 5)]
    batched = net.generate(prompts, max_new_tokens=9)
    for row, prompt in zip(batched, prompts):
        alone = net.generate([prompt], max_new_tokens=9)[0]
        with torch.no_grad():
            expected = ref.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=9, eos_token_id=None,
                                    pad_token_id=0)[0, len(prompt):]
        assert row.tolist() == alone.tolist() == expected.tolist(), name


def test_tokenizer_and_generation_settings_travel(pair) -> None:
    name, _, _, conv = pair
    tok = conv.load_tokenizer()
    ids = tok.encode("w5 w7").ids
    assert ids == ([5, 7] if name == "gpt2" else [BOS, 5, 7])  # Llama's BOS rule survives the round trip
    assert tok.encode("w5 w7", add_special_tokens=False).ids == [5, 7]
    assert conv.module["eos_ids"] == [EOS] and conv.module["pad_id"] == EOS and conv.module["temperature"] == 0.0


def test_both_config_layouts_give_the_same_model() -> None:
    """transformers 4 wrote rope_theta + rope_scaling (`type` in older files), transformers 5 rope_parameters."""
    from models.pretrained.llama import lm_kwargs

    base = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                intermediate_size=72)
    new = lm_kwargs({**base, "rope_parameters": {"rope_theta": 500.0, **LLAMA3}}, "new")
    old = lm_kwargs({**base, "rope_theta": 500.0, "rope_scaling": {**LLAMA3}}, "old")
    assert new == old and new["rope_base"] == 500.0 and new["rope_scaling"]["rope_type"] == "llama3"
    linear = lm_kwargs({**base, "rope_scaling": {"type": "linear", "factor": 2.0}}, "linear")
    assert linear["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and linear["rope_base"] == 10000.0


@pytest.mark.parametrize("change,message", [
    ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0}}, "rope_type='yarn'"),
    ({"head_dim": 16}, "head_dim=16 is not hidden_size / num_attention_heads = 8"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window=true"),
])
def test_what_the_model_cannot_express_is_refused(change: dict, message: str) -> None:
    from models.pretrained.llama import lm_kwargs
    from utils.errors import FileFormatError

    config = {**dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, num_attention_heads=4,
                     num_hidden_layers=2, intermediate_size=72), **change}
    with pytest.raises(FileFormatError, match=message):
        lm_kwargs(config, "x")


def test_a_folder_without_tokenizer_json_says_so(tmp_path: Path) -> None:
    from utils.errors import UserError

    FAMILIES["gpt2"]().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="has no tokenizer.json"):
        convert(str(tmp_path))


def test_safetensors_shards_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = FAMILIES["llama"]().eval()
    ref.save_pretrained(tmp_path, max_shard_size="40KB")
    tiny_tokenizer(add_bos=True).save(str(tmp_path / "tokenizer.json"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        assert (convert(str(tmp_path)).build()(ids) - ref(ids).logits).abs().max() <= 1e-4
