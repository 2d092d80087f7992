"""The shared blocks' options against torch's own transformer layers with the same weights."""

import pytest
import torch
from torch import nn

from models.layers import DecoderBlock, EncoderBlock, activation


def _copy_attention(zoo, ref: nn.MultiheadAttention) -> None:
    # The core's fused qkv projection holds q, k, v stacked in that order, as nn.MultiheadAttention does.
    zoo.qkv.weight.copy_(ref.in_proj_weight)
    zoo.qkv.bias.copy_(ref.in_proj_bias)
    zoo.proj.weight.copy_(ref.out_proj.weight)
    zoo.proj.bias.copy_(ref.out_proj.bias)


def _copy_mlp_norms(zoo, ref, norms) -> None:
    zoo.mlp.fc1.load_state_dict(ref.linear1.state_dict())
    zoo.mlp.fc2.load_state_dict(ref.linear2.state_dict())
    for mine, theirs in norms:
        mine.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("act", ["gelu", "relu"])
@torch.no_grad()
def test_encoder_block_equals_torch_transformer_layer(norm_first: bool, act: str) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=act, batch_first=True,
                                     norm_first=norm_first, layer_norm_eps=1e-5).eval()
    zoo = EncoderBlock(32, 4, mlp_ratio=2.0, norm_eps=1e-5, norm_first=norm_first, act=act).eval()
    _copy_attention(zoo.attn, ref.self_attn)
    _copy_mlp_norms(zoo, ref, [(zoo.norm1, ref.norm1), (zoo.norm2, ref.norm2)])
    x = torch.randn(3, 7, 32)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    out, expected = zoo(x, key_padding_mask=pad), ref(x, src_key_padding_mask=pad)
    keep = ~pad  # torch's fast path may leave padded rows as anything
    torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [True, False])
@torch.no_grad()
def test_decoder_block_equals_torch_decoder_layer(norm_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True,
                                     norm_first=norm_first, layer_norm_eps=1e-5).eval()
    zoo = DecoderBlock(32, 4, mlp_ratio=2.0, norm_eps=1e-5, norm_first=norm_first).eval()
    _copy_attention(zoo.self_attn, ref.self_attn)
    _copy_attention(zoo.cross_attn, ref.multihead_attn)
    _copy_mlp_norms(zoo, ref, [(zoo.norm1, ref.norm1), (zoo.norm2, ref.norm2), (zoo.norm3, ref.norm3)])
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(zoo(x, memory), ref(x, memory, tgt_mask=causal, tgt_is_causal=True),
                               atol=1e-5, rtol=1e-5)


def test_activation_names() -> None:
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(activation("silu")(x), x * torch.sigmoid(x))
    torch.testing.assert_close(activation("gelu_tanh")(x), nn.functional.gelu(x, approximate="tanh"))
    with pytest.raises(ValueError, match="act='swish'"):
        activation("swish")
