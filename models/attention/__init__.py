"""The attention core: every model in the zoo computes attention here and nowhere else.

`MultiHeadAttention` (core.py) is one class for self- and cross-attention (keys/values come from
`context` when given), with padding / causal / custom masks, grouped-query attention, a key/value
cache for incremental decoding (cache.py), injected rotary position embeddings (rotary.py), and two
interchangeable kernels behind one call, `attend` (kernels.py):

* fused: `torch.nn.functional.scaled_dot_product_attention` (memory linear in length)
* explicit: `softmax(Q K^T / sqrt(d_k)) V` written out, the reference the tests check against.

The default, "auto", picks per call: explicit on CPU for short sequences of narrow heads (faster
there), fused otherwise.

Sliding-window attention (`window=W`, Longformer / Mistral) and global tokens (`num_global=G`)
are options of the same class (window.py): each query sees the keys less than W positions away
(with `causal=True`: itself and the W - 1 before it), and the first G tokens see and are seen by
all. Long inputs run blocked, so time and memory grow as N * W, not N^2, forward and backward; a
windowed self-attention cache keeps only the last W - 1 keys (a rolling cache).

Attention maps (`need_weights=True`, AttentionRecorder / attention_maps in maps.py) come with the
output from one explicit pass: no second QK^T, and the output equals the fused kernel's up to float
rounding (the explicit kernel's bit for bit).

Files: kernels.py (switch + attend), masks.py, window.py, cache.py, rotary.py, core.py, maps.py.
"""

# Tests patch attention.F.scaled_dot_product_attention to count kernel calls.
import torch.nn.functional as F  # noqa: F401

from models.attention.cache import KVCache
from models.attention.core import MultiHeadAttention
from models.attention.kernels import (
    AUTO_EXPLICIT_MAX,
    DEFAULT_KERNEL,
    KERNELS,
    attend,
    attention_kernel,
    attention_weights,
    fused_attn,
    open_empty_rows,
    parse_kernel,
    repeat_kv,
    SDPA_BACKENDS,
    set_attention_kernel,
    set_sdpa_backends,
    use_fused_attn,
)
from models.attention.maps import AttentionRecorder, attention_maps, select_attention_layers
from models.attention.masks import band_mask, build_mask
from models.attention.rotary import RotaryEmbedding, llama3_inv_freq
from models.attention.window import check_window_inputs, windowed_attention

__all__ = [
    "AUTO_EXPLICIT_MAX",
    "DEFAULT_KERNEL",
    "KERNELS",
    "SDPA_BACKENDS",
    "AttentionRecorder",
    "KVCache",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "attend",
    "attention_kernel",
    "attention_maps",
    "attention_weights",
    "band_mask",
    "build_mask",
    "check_window_inputs",
    "fused_attn",
    "llama3_inv_freq",
    "open_empty_rows",
    "parse_kernel",
    "repeat_kv",
    "select_attention_layers",
    "set_attention_kernel",
    "set_sdpa_backends",
    "use_fused_attn",
    "windowed_attention",
]
