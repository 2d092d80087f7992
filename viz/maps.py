"""From raw attention weights to what a person wants to see, for each model of the zoo.

Every map here is a per-head map of a Prediction (inference/predictor.py: recorded in the pass that made the
prediction: each layer's output and map come from one explicit pass). This module only selects heads and combines them:

* attention rollout (Abnar & Zuidema 2020): how much each input token flows into the pooled output,
  through all layers, counting the residual path (each layer as 0.5 * A + 0.5 * I);
* ViT / audio: the rollout from the class token (or, for mean pooling, from all tokens) on the
  patch grid (rows x columns of the image, mel bands x time for a spectrogram);
* video: divided space / time attention written as one (T*N) x (T*N) token matrix per layer, so the
  same rollout gives a spatial map per frame; plus a layer's frame-to-frame (temporal) attention;
* translation: cross-attention (target tokens x source tokens) and encoder self-attention, from a
  teacher-forced pass over the model's own translation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn


def rollout(maps: list[Tensor], residual: float = 0.5) -> Tensor:
    """Attention rollout: maps is one (B, L, L) head-averaged matrix per layer, first layer first.

    Returns (B, L, L): row i is how much each input token contributes to output token i, with each
    layer taken as residual * I + (1 - residual) * A (the skip connection carries the token itself).
    """
    if not maps:
        raise ValueError("rollout needs at least one layer's attention map")
    if not 0.0 <= residual < 1.0:
        raise ValueError(f"residual must be in [0, 1), got {residual}")
    B, L, _ = maps[0].shape
    eye = torch.eye(L, dtype=maps[0].dtype, device=maps[0].device)
    out = eye.expand(B, L, L)
    for a in maps:
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        out = a @ out
    return out


def _layer_index(name: str, part: str) -> int:
    """'encoder.blocks.3.attn' -> 3: the number after `part` in a module name (orders the layers)."""
    pieces = name.split(".")
    return int(pieces[pieces.index(part) + 1])


@dataclass
class ClassifierMaps:
    """What a classifier attended to, for a batch.

    logits: (B, classes). tokens: (B, gh, gw) rollout on the patch grid (ViT / audio), or
    (B, T, gh, gw) for video; each example's map sums to 1 over its cells.
    time: video only, (B, T, T) frame-to-frame attention of `time_layer` (rows = frame looking).
    """

    logits: Tensor
    tokens: Tensor
    time: Tensor | None = None
    time_layer: str | None = None


def mean_of_heads(maps: dict[str, Tensor], heads: list[int] | None = None) -> dict[str, Tensor]:
    """{layer: (B, H, T, S)} -> {layer: (B, T, S)}: the mean over `heads` (None: all of them)."""
    return {k: (w if heads is None else w[:, list(heads)]).mean(dim=1) for k, w in maps.items()}


def in_layer_order(names: list[str]) -> list[str]:
    """Layer names in layer order ('encoder.blocks.10.attn' after '...2.attn')."""
    return sorted(names, key=lambda n: [int(p) if p.isdigit() else -1 for p in n.split(".")])


def classifier_views(net: nn.Module, x: Tensor, logits: Tensor, maps: dict[str, Tensor],
                     heads: list[int] | None = None, time_layer: int = -1) -> ClassifierMaps:
    """What an image / audio / video classifier attended to, from the per-head maps of its forward pass on x."""
    if net.modality == "video":
        return _video_maps(net, x, logits, mean_of_heads(maps, heads), time_layer)
    mean = mean_of_heads(maps, heads)
    flow = rollout([mean[k] for k in in_layer_order(list(mean))])  # (B, L, L)
    # Tokens before the patches: a class token, and a DeiT / AST distillation token.
    prefix = getattr(net, "num_prefix", int(getattr(net, "cls_token", None) is not None))
    # What the head(s) read: the class (and distillation: DeiT, AST) token rows, or the mean of the patch rows,
    # or both halves alike (DINOv2's classifier reads the class token beside the patch mean: pool "cls_mean").
    pool = getattr(net, "pool", "mean")
    if pool == "cls_mean":
        received = (flow[:, 0, prefix:] + flow[:, prefix:, prefix:].mean(dim=1)) / 2
    else:
        reads = slice(0, prefix) if pool == "cls" else slice(prefix, None)
        received = flow[:, reads, prefix:].mean(dim=1)
    if prefix:  # the prefix tokens' share is not a place in the input
        received = received / received.sum(-1, keepdim=True)
    gh, gw = _grid(net, x)
    return ClassifierMaps(logits, received.reshape(-1, gh, gw))


def _grid(net: nn.Module, x: Tensor) -> tuple[int, int]:
    if hasattr(net, "token_grid"):  # a network without patches says its own (rows, columns) of tokens
        return net.token_grid(x)
    if hasattr(net, "spectrogram"):  # audio: the grid of the spectrogram, not of the waveform
        return net.patch_embed.grid_for(tuple(net.frontend(x if x.dim() == 2 else x[:, 0]).shape[-2:]))
    return net.patch_embed.grid_for(tuple(x.shape[-2:]))


def divided_as_joint(time: Tensor, space: Tensor) -> tuple[Tensor, Tensor]:
    """Divided attention as two (B, T*N, T*N) token matrices (token index t * N + n).

    time (B, N, T, T): at position n, frame t looks at frame s -> links token (t, n) to (s, n).
    space (B, T, N, N): in frame t, patch n looks at patch m -> links token (t, n) to (t, m).
    """
    B, N, T, _ = time.shape
    eye_t = torch.eye(T, dtype=time.dtype, device=time.device)
    eye_n = torch.eye(N, dtype=time.dtype, device=time.device)
    time_joint = torch.einsum("bnts,nm->btnsm", time, eye_n).reshape(B, T * N, T * N)
    space_joint = torch.einsum("btnm,ts->btnsm", space, eye_t).reshape(B, T * N, T * N)
    return time_joint, space_joint


def video_token_maps(net: nn.Module, maps: dict[str, Tensor], B: int, T: int) -> tuple[list[Tensor], list[Tensor]]:
    """Head-averaged maps of a VideoTransformer (named by layer) -> the (B, T*N, T*N) token matrices
    in the order the blocks apply them (rollout's input), and each block's (B, T, T) frame-to-frame attention."""
    per_layer, time_maps = [], []
    for i in range(len(net.blocks)):
        if net.attention == "divided":
            wt = rearrange(maps[f"blocks.{i}.attn_time"], "(b n) t s -> b n t s", b=B)
            ws = rearrange(maps[f"blocks.{i}.attn_space"], "(b t) n m -> b t n m", b=B)
            if ws.shape[-1] == wt.shape[1] + 1:  # TimeSformer's class token in every frame: the patches' share
                ws = ws[..., 1:, 1:] / ws[..., 1:, 1:].sum(-1, keepdim=True).clamp_min(1e-12)
            per_layer += list(divided_as_joint(wt, ws))  # temporal first: the order the block applies them
            time_maps.append(wt.mean(dim=1))  # (B, T, T), averaged over positions
        else:
            joint = maps[f"blocks.{i}.attn"]  # (B, T*N, T*N)
            per_layer.append(joint)
            # From frame t (mean over its patches) to frame t' (sum over its patches): rows sum to 1.
            time_maps.append(rearrange(joint, "b (t n) (s m) -> b t n s m", t=T, s=T).sum(-1).mean(2))
    return per_layer, time_maps


def _video_maps(net: nn.Module, x: Tensor, logits: Tensor, maps: dict[str, Tensor], time_layer: int) -> ClassifierMaps:
    B, _, T, H, W = x.shape
    T //= getattr(net.patch_embed, "tubelet", 1)  # time steps of tokens (VideoMAE: one per 2 frames)
    gh, gw = net.patch_embed.grid_for((H, W))
    depth = len(net.blocks)
    if not -depth <= time_layer < depth:
        raise ValueError(f"time_layer={time_layer} out of range for a video model with {depth} blocks")
    time_layer %= depth
    per_layer, time_maps = video_token_maps(net, maps, B, T)
    flow = rollout(per_layer).mean(dim=1)  # mean pooling over all T*N tokens
    tubelet = getattr(net.patch_embed, "tubelet", 1)  # a token spans `tubelet` frames: each of them shows its map
    tokens = flow.reshape(B, T, gh, gw).repeat_interleave(tubelet, dim=1) / tubelet
    return ClassifierMaps(logits, tokens, time_maps[time_layer], f"block {time_layer}")


@dataclass
class TranslationMaps:
    """Attention of one translated sentence. cross: (target tokens, source tokens), row t = the
    decoder producing target token t; encoder: (source, source), row = the token looking."""

    source_tokens: list[str]
    target_tokens: list[str]
    cross: Tensor
    encoder: Tensor
    cross_layer: str
    encoder_layer: str


def translation_views(source_tokens: list[str], target_tokens: list[str], maps: dict[str, Tensor],
                      cross_layer: int = -1, encoder_layer: int = -1,
                      heads: list[int] | None = None) -> TranslationMaps:
    """One layer's cross-attention and one encoder layer's self-attention, mean of `heads`, from the per-head
    maps of a teacher-forced pass (decoder.<i>.cross_attn, encoder.blocks.<i>.attn)."""
    cross = in_layer_order([n for n in maps if n.endswith(".cross_attn")])
    encoder = in_layer_order([n for n in maps if n.startswith("encoder.")])
    for value, names, what in ((cross_layer, cross, "cross_layer"), (encoder_layer, encoder, "encoder_layer")):
        if not -len(names) <= value < len(names):
            raise ValueError(f"{what}={value} out of range for {len(names)} layers")
    cross_name, enc_name = cross[cross_layer], encoder[encoder_layer]
    mean = mean_of_heads({k: maps[k] for k in (cross_name, enc_name)}, heads)
    return TranslationMaps(source_tokens, target_tokens, mean[cross_name][0], mean[enc_name][0], cross_name,
                           enc_name)


# ------------------------------------------------------------------ a backbone's class token and patches


def patch_range(net: nn.Module) -> slice:
    """Where the patches are among a ViT's tokens: after the class, distillation and register tokens
    (`num_prefix` counts them all)."""
    prefix = getattr(net, "num_prefix", int(getattr(net, "cls_token", None) is not None))
    return slice(int(prefix), None)


def cls_attention(last: Tensor, net: nn.Module, grid: tuple[int, int]) -> Tensor:
    """(1, H, T, T) per-head attention of a layer -> (H, gh, gw): what the class token (token 0)
    looks at among the patches, per head (DINO's figure), without the prefix tokens' share (so each
    head's map sums to the share the patches get, not to 1)."""
    gh, gw = grid
    return last[0, :, 0, patch_range(net)].reshape(-1, gh, gw)


def mass_mask(weights: Tensor, share: float = 0.6) -> Tensor:
    """(..., gh, gw) non-negative maps -> boolean masks of the same shape: per map, the smallest set
    of cells holding at least `share` of the map's mass (its largest cells; DINO's thresholded heads).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share={share}: expected a fraction in (0, 1]")
    flat = weights.flatten(-2).float()
    flat = flat / flat.sum(-1, keepdim=True).clamp_min(1e-12)
    values, order = flat.sort(-1, descending=True)
    before = values.cumsum(-1) - values  # the mass of the larger cells
    keep_sorted = before < share - 1e-6  # a cell is needed while the larger ones hold less than `share`
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(weights.shape)


def pca_colours(patches: Tensor, grid: tuple[int, int]) -> Tensor:
    """(N, dim) patch features -> (gh, gw, 3) colours in [0, 1]: their first three principal
    components, each scaled from its minimum to its maximum (DINO / DINOv2's feature pictures)."""
    from sklearn.decomposition import PCA

    x = patches.detach().double().cpu().numpy()
    n = min(3, *x.shape)
    parts = torch.from_numpy(PCA(n_components=n, svd_solver="full").fit_transform(x)).float()
    if n < 3:  # fewer patches or features than colours: the missing components are black
        parts = torch.cat([parts, torch.zeros(len(parts), 3 - n)], dim=1)
    low, high = parts.amin(0), parts.amax(0)
    colours = (parts - low) / (high - low).clamp_min(1e-12)
    return colours.reshape(*grid, 3)


@dataclass
class BackboneMaps:
    """A ViT's class-token attention and patch features on one image.

    heads: (H, gh, gw) last-layer attention of the class token over the patches (raw); masks: the same
    shape, each head's smallest patch set holding `share` of its mass; colours: (gh, gw, 3) the first
    principal components of the last layer's patch features; layer: the layer the heads come from."""

    heads: Tensor
    masks: Tensor
    colours: Tensor | None
    layer: str
    share: float


def backbone_views(net: nn.Module, x: Tensor, maps: dict[str, Tensor], tokens: Tensor | None,
                   share: float = 0.6) -> BackboneMaps:
    """DINO's pictures of one image (batch of 1) from the per-head maps and the encoder's output tokens
    (1, T, dim) of the pass that made the prediction."""
    if getattr(net, "cls_token", None) is None:
        raise ValueError(f"{type(net).__name__} has no class token: no class-token attention to draw")
    grid = _grid(net, x)
    layer = in_layer_order(list(maps))[-1]
    heads = cls_attention(maps[layer], net, grid)
    colours = pca_colours(tokens[0, patch_range(net)], grid) if tokens is not None else None
    return BackboneMaps(heads, mass_mask(heads, share), colours, layer, share)


# ------------------------------------------------------------------------ a causal LM's heads


def stacked_maps(maps: dict[str, Tensor]) -> Tensor:
    """{layer: (1, H, T, T)} -> (layers, H, T, T), first layer first."""
    return torch.stack([maps[k][0] for k in in_layer_order(list(maps))])


def sink_share(maps: Tensor) -> Tensor:
    """(layers, H, T, T) causal maps -> (layers,): the attention on the first token (the "attention sink",
    Xiao et al. 2023), the mean over heads and over the queries 1..T-1 (query 0 can only look at itself)."""
    if maps.shape[-1] < 2:
        raise ValueError("sink_share needs at least two tokens")
    return maps[..., 1:, 0].float().mean(dim=(-1, -2))


def previous_token_scores(maps: Tensor, start: int = 0) -> Tensor:
    """(layers, H, T, T) -> (layers, H): each head's mean attention from position i to i - 1, over the
    positions after `start` (the tokens before the test sequence, e.g. a BOS, are left out)."""
    i = torch.arange(start + 1, maps.shape[-1], device=maps.device)
    if len(i) == 0:
        raise ValueError(f"previous_token_scores: no position after start={start}")
    return maps[..., i, i - 1].float().mean(-1)


def induction_scores(maps: Tensor, n: int, start: int = 0) -> Tensor:
    """(layers, H, T, T) maps of `start` tokens then n random tokens twice -> (layers, H): each head's
    mean attention from every position i of the second copy to i - n + 1, the token that followed the
    earlier occurrence of token i (Olsson et al. 2022: an induction head copies what came next)."""
    if maps.shape[-1] < start + 2 * n or n < 1:
        raise ValueError(f"induction_scores: {maps.shape[-1]} tokens, expected start + 2 n = {start + 2 * n}")
    i = torch.arange(start + n, start + 2 * n, device=maps.device)
    return maps[..., i, i - n + 1].float().mean(-1)


@dataclass
class CausalViews:
    """What a causal LM's heads do. per_layer: (layers, T, T) head-mean maps of prompt + continuation;
    sink: (layers,) attention on token 0; previous, induction: (layers, H) scores on the repeated random
    sequence (None when it was not recorded)."""

    layers: list[str]
    per_layer: Tensor
    sink: Tensor
    previous: Tensor | None
    induction: Tensor | None


def causal_views(maps: dict[str, Tensor], repeat_maps: dict[str, Tensor] | None = None, n: int = 0,
                 start: int = 0, heads: list[int] | None = None) -> CausalViews:
    """The numbers of a causal LM's pictures, from the maps of the generated sequence and (for the
    previous-token / induction scores) those of `start` tokens then n random tokens twice."""
    layers = in_layer_order(list(maps))
    stacked = stacked_maps(maps)
    chosen = stacked if heads is None else stacked[:, list(heads)]
    previous = induction = None
    if repeat_maps:
        rep = stacked_maps(repeat_maps)
        previous, induction = previous_token_scores(rep, start), induction_scores(rep, n, start)
    return CausalViews(layers, chosen.mean(1), sink_share(chosen), previous, induction)
