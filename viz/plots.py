"""Attention pictures (PNG) for people: titles, labelled axes and colour bars on every panel."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

CMAP = "viridis"


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _upsample(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """(gh, gw) map -> (H, W), bilinear, for overlaying on the input."""
    return F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def _show_image(ax: plt.Axes, image: Tensor) -> None:
    """image: (C, H, W) in [0, 1]."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1))


def plot_image_attention(image: Tensor, grid: Tensor, title: str, path: str | Path) -> Path:
    """The image, the rollout on the patch grid, and the two overlaid. grid: (gh, gw)."""
    H, W = image.shape[-2:]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), layout="constrained")
    _show_image(axes[0], image)
    axes[0].set_title("input")
    im = axes[1].imshow(grid, cmap=CMAP)
    axes[1].set_title(f"attention rollout ({grid.shape[0]}x{grid.shape[1]} patches)")
    axes[1].set_xticks(range(grid.shape[1]))
    axes[1].set_yticks(range(grid.shape[0]))
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="share of attention")
    _show_image(axes[2], image)
    im = axes[2].imshow(_upsample(grid, (H, W)), cmap=CMAP, alpha=0.55)
    axes[2].set_title("overlay")
    fig.colorbar(im, ax=axes[2], fraction=0.046, label="share of attention")
    for ax in axes:
        ax.set_xlabel("x (pixels)" if ax is not axes[1] else "patch column")
        ax.set_ylabel("y (pixels)" if ax is not axes[1] else "patch row")
    fig.suptitle(title)
    return _save(fig, path)


def plot_audio_attention(spec: Tensor, grid: Tensor, title: str, path: str | Path, hop_seconds: float) -> Path:
    """Log-mel spectrogram (n_mels, frames) above the rollout over (mel bands x time) patches.

    All panels share the time axis (seconds); with full-height patches (KWT) the map has one row:
    the model can only say *when* it listened, and the spectrogram shows at which frequencies.
    """
    n_mels, frames = spec.shape
    seconds = frames * hop_seconds
    extent = (0.0, seconds, 0, n_mels)
    fig = plt.figure(figsize=(8, 8))
    gs = fig.add_gridspec(3, 2, height_ratios=[3, 3, 1.6], width_ratios=[40, 1], hspace=0.45, wspace=0.05)
    ax, cax = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])
    im = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, cmap="magma")
    ax.set_title("log-mel spectrogram (normalised)")
    ax.set_ylabel("mel band")
    fig.colorbar(im, cax=cax, label="log power")
    ax, cax = fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
    ax.imshow(spec, origin="lower", aspect="auto", extent=extent, cmap="gray")
    im = ax.imshow(grid, origin="lower", aspect="auto", extent=extent, cmap=CMAP, alpha=0.65)
    ax.set_title(f"attention rollout over {grid.shape[0]} x {grid.shape[1]} (mel x time) patches")
    ax.set_ylabel("mel band")
    fig.colorbar(im, cax=cax, label="share of attention")
    ax = fig.add_subplot(gs[2, 0])
    per_time = grid.sum(0)
    width = seconds / len(per_time)
    ax.bar((torch.arange(len(per_time)) + 0.5) * width, per_time, width=width, color="tab:green")
    ax.set_xlim(0, seconds)
    ax.set_ylabel("share per\ntime step")
    ax.set_xlabel("time (s)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_token_time(spec: Tensor, attn: Tensor, tokens: list[str], title: str, path: str | Path,
                    frame_seconds: float, words: list[tuple[str, float, float]] | None = None,
                    until: float | None = None, credit: str | None = None) -> Path:
    """Log-mel spectrogram (n_mels, frames) above a (tokens, positions) attention over time: one row per
    token, the positions spread evenly over the spectrogram's seconds (shared time axis). words: (text, start,
    end) in seconds, marked on both panels (a dashed line where each starts, its text above the spectrogram);
    until: the time axis cut there (the audio's end); credit: a line under the picture (a recording's source)."""
    n_mels, frames = spec.shape
    seconds = frames * frame_seconds
    fig = plt.figure(figsize=(9, 3 + 0.25 * len(tokens)))
    gs = fig.add_gridspec(2, 2, height_ratios=[3, max(2, 0.3 * len(tokens))], width_ratios=[40, 1],
                          hspace=0.35, wspace=0.05)
    ax, cax = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])
    im = ax.imshow(spec, origin="lower", aspect="auto", extent=(0.0, seconds, 0, n_mels), cmap="magma")
    ax.set_title("log-mel spectrogram")
    ax.set_ylabel("mel band")
    fig.colorbar(im, cax=cax, label="log power")
    ax, cax = fig.add_subplot(gs[1, 0], sharex=ax), fig.add_subplot(gs[1, 1])
    im = ax.imshow(attn, aspect="auto", interpolation="nearest", cmap=CMAP,
                   extent=(0.0, seconds, len(tokens) - 0.5, -0.5))
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("token (being produced)")
    fig.colorbar(im, cax=cax, label="attention")
    if words:
        _mark_words(fig.axes[0], ax, words)
        fig.axes[0].set_title("")  # the words' labels take its place; the title goes left, above them
        fig.axes[0].set_title("log-mel spectrogram", loc="left", pad=14)
    if until is not None:
        ax.set_xlim(0.0, until)  # shared: both panels
    if credit:
        fig.text(0.01, -0.02, credit, fontsize=8, color="#444", va="top")
    fig.suptitle(title, y=1.0 + 0.45 / fig.get_figheight())  # above the spectrogram's own title
    return _save(fig, path)


def _mark_words(spec_ax: plt.Axes, attn_ax: plt.Axes, words: list[tuple[str, float, float]]) -> None:
    """A dashed line at each word's start (and the last one's end) on both panels, the word above the
    spectrogram between its start and end."""
    edges = sorted({s for _, s, _ in words} | {words[-1][2]})
    for ax in (spec_ax, attn_ax):
        for t in edges:
            ax.axvline(t, color="white" if ax is spec_ax else "red", lw=0.9, ls="--", alpha=0.9)
    for text, start, end in words:
        spec_ax.text((start + end) / 2, 1.01, text.strip(), transform=spec_ax.get_xaxis_transform(), ha="center",
                     va="bottom", fontsize=8, color="#b00")


def plot_video_attention(frames: Tensor, grids: Tensor, time: Tensor, title: str, path: str | Path,
                         time_label: str) -> Path:
    """frames (T, C, H, W) in [0, 1] with the spatial map of each frame overlaid (top two rows), and
    the frame-to-frame temporal attention (rows = frame looking, columns = frame looked at)."""
    T = frames.shape[0]
    H, W = frames.shape[-2:]
    fig = plt.figure(figsize=(max(10, 1.6 * T), 8))
    gs = fig.add_gridspec(3, T + 1, height_ratios=[1, 1, 2.2], width_ratios=[1] * T + [0.08])
    vmax = float(grids.max())
    for t in range(T):
        ax = fig.add_subplot(gs[0, t])
        _show_image(ax, frames[t])
        ax.set_title(f"frame {t}", fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(gs[1, t])
        _show_image(ax, frames[t])
        im = ax.imshow(_upsample(grids[t], (H, W)), cmap=CMAP, alpha=0.6, vmin=0, vmax=vmax)
        ax.set_title(f"{float(grids[t].sum()):.0%} of rollout", fontsize=8)
        ax.axis("off")
    fig.colorbar(im, cax=fig.add_subplot(gs[1, T]), label="share")
    ax = fig.add_subplot(gs[2, : max(1, T // 2)])
    im = ax.imshow(time, cmap=CMAP, vmin=0)
    ax.set_title(f"temporal attention, {time_label} (mean over heads and positions)")
    ax.set_xlabel("frame looked at (key)")
    ax.set_ylabel("frame looking (query)")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.suptitle(f"{title}\nrow 1: frames; row 2: spatial attention rollout per frame")
    return _save(fig, path)


def plot_matrix(matrix: Tensor, rows: list[str], cols: list[str], title: str, path: str | Path,
                xlabel: str, ylabel: str) -> Path:
    """A labelled attention matrix (rows look at columns), e.g. target x source alignment."""
    h, w = matrix.shape
    fig, ax = plt.subplots(figsize=(max(5, 0.42 * w + 2.5), max(4, 0.36 * h + 2)))
    im = ax.imshow(matrix, cmap=CMAP, vmin=0, vmax=max(float(matrix.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(w), cols, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(h), rows, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="attention weight")
    return _save(fig, path)


def plot_cls_heads(image: Tensor, heads: Tensor, masks: Tensor, share: float, title: str,
                   path: str | Path) -> Path:
    """DINO's figure: per head (columns), the class token's attention over the patches overlaid on the
    image (top row) and the smallest patch set holding `share` of that head's mass (bottom row).
    heads, masks: (H, gh, gw)."""
    n = heads.shape[0]
    H, W = image.shape[-2:]
    fig, axes = plt.subplots(2, n + 1, figsize=(2.4 * (n + 1), 5.2), squeeze=False,
                             layout="constrained")
    for row in range(2):
        _show_image(axes[row, 0], image)
        axes[row, 0].set_title("input", fontsize=9)
    for h in range(n):
        ax = axes[0, h + 1]
        _show_image(ax, image)
        ax.imshow(_upsample(heads[h], (H, W)), cmap=CMAP, alpha=0.6)
        ax.set_title(f"head {h}: {float(heads[h].sum()):.0%} on patches", fontsize=9)
        ax = axes[1, h + 1]
        _show_image(ax, image)
        kept = F.interpolate(masks[h][None, None].float(), size=(H, W), mode="nearest")[0, 0]
        shade = torch.zeros(H, W, 4)
        shade[..., 3] = 0.75 * (1 - kept)  # the patches left out are darkened
        ax.imshow(shade)
        ax.set_title(f"{int(masks[h].sum())} patches: {share:.0%} of mass", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"{title}\nrow 1: attention of the class token per head; "
                 f"row 2: smallest patch set holding {share:.0%} of it")
    return _save(fig, path)


def plot_pca(image: Tensor, colours: Tensor, title: str, path: str | Path) -> Path:
    """The image beside its patch features' first three principal components as RGB (gh, gw, 3)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), layout="constrained")
    _show_image(axes[0], image)
    axes[0].set_title("input")
    axes[1].imshow(colours.clamp(0, 1), interpolation="nearest")
    axes[1].set_title(f"patch features: principal components 1-3 as RGB "
                      f"({colours.shape[1]}x{colours.shape[0]} patches)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def map_grid(maps: Tensor, tokens: list[str], panels: list[str], *, side: float, max_labels: int, fontsize: int,
             axis_labels: tuple[str, str], boundary: int = 0) -> plt.Figure:
    """(n, T, T) maps, one panel each (titled by `panels`), row = query, column = key, each on its own colour
    scale from 0; tokens label the axes when T <= max_labels; a dashed line after `boundary` tokens (0: none)."""
    n, T = maps.shape[0], maps.shape[-1]
    cols = min(n, max(2, round(n**0.5)))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1, side * rows + 0.8), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        m = maps[k].float()
        im = ax.imshow(m, cmap=CMAP, vmin=0, vmax=max(float(m.max()), 1e-6), interpolation="nearest")
        if 0 < boundary < T:
            for line in (ax.axhline, ax.axvline):
                line(boundary - 0.5, color="white", lw=1, ls="--")
        if T <= max_labels:
            ax.set_xticks(range(T), tokens, rotation=90, fontsize=fontsize)
            ax.set_yticks(range(T), tokens, fontsize=fontsize)
        ax.set_title(panels[k], fontsize=9)
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        fig.colorbar(im, ax=ax, fraction=0.046, label="attention weight")
    return fig


def plot_causal_layers(maps: Tensor, tokens: list[str], boundary: int, layers: list[str], title: str,
                       path: str | Path, max_labels: int = 48, heads: str = "mean over heads") -> Path:
    """A causal LM's attention per layer: maps (layers, T, T), row = token looking (its output predicts
    the next token), column = earlier token looked at; the line after `boundary` tokens separates the
    prompt (before) from the continuation. Tokens are labelled when there are at most max_labels. heads: which
    heads the maps are the mean of, as the subtitle says it."""
    T = maps.shape[-1]
    fig = map_grid(maps, tokens, [f"layer {k} ({name})" for k, name in enumerate(layers)],
                   side=max(3.2, min(6.5, 0.16 * T + 1.5)), max_labels=max_labels, fontsize=7,
                   axis_labels=("earlier token looked at (key)", "token looking (query)"), boundary=boundary)
    fig.suptitle(f"{title}\ncausal self-attention, {heads}; dashed: prompt | continuation")
    return _save(fig, path)


def plot_sink(sink: Tensor, title: str, path: str | Path) -> Path:
    """One bar per layer: the mean attention on the first token (the attention sink)."""
    n = len(sink)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * n + 2), 3.6), layout="constrained")
    ax.bar(range(n), sink.float(), color="tab:purple")
    for k, v in enumerate(sink.tolist()):
        ax.text(k, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention on token 0\n(mean of heads and queries)")
    ax.set_title(f"{title}\nattention sink: weight on the first token per layer")
    return _save(fig, path)


def plot_head_scores(previous: Tensor, induction: Tensor, n: int, title: str, path: str | Path) -> Path:
    """Two layer x head grids: previous-token scores and induction scores on n random tokens repeated."""
    L, H = previous.shape
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.2 * H * 2 + 3), max(3, 0.5 * L + 2)),
                             layout="constrained")
    for ax, scores, name, what in (
            (axes[0], previous, "previous-token score", "mean attention from i to i - 1"),
            (axes[1], induction, "induction score", f"second copy: mean attention from i to i - {n} + 1")):
        im = ax.imshow(scores.float(), cmap=CMAP, vmin=0, vmax=1, aspect="auto")
        if L * H <= 400:
            for (l, h), v in zip(((l, h) for l in range(L) for h in range(H)), scores.flatten().tolist()):
                ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{name}\n({what})", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, label="score")
    fig.suptitle(f"{title}\non {n} random tokens repeated twice")
    return _save(fig, path)


def plot_contacts(predicted: Tensor | None, true: Tensor | None, residues: str, top: list[tuple[int, int, float]],
                  title: str, path: str | Path, max_labels: int = 64) -> Path:
    """A protein's contact maps: the contact head's probabilities (L, L) beside the true contacts (L, L bool,
    C-beta < 8 A) when a structure is known, either alone otherwise. `top`: the printed contacts (1-based i < j,
    p), marked on the true map's upper triangle (o: a true contact, x: not one). Residue letters label the axes
    of a short protein (at most max_labels residues)."""
    panels = [(m, name) for m, name in ((predicted, "predicted"), (true, "true")) if m is not None]
    L = len(residues)
    extent = (0.5, L + 0.5, L + 0.5, 0.5)  # pixel k is residue k (1-based, as the printed contacts)
    side = max(4.0, min(7.0, 0.09 * L + 2.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 1, side + 0.8), squeeze=False,
                             layout="constrained")
    for ax, (m, name) in zip(axes[0], panels):
        if name == "predicted":
            im = ax.imshow(m.float(), cmap=CMAP, vmin=0, vmax=1, interpolation="nearest", extent=extent)
            ax.set_title("predicted: contact head probability")
            fig.colorbar(im, ax=ax, fraction=0.046, label="probability")
        else:
            ax.imshow(m.float(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest", extent=extent)
            hits = [(i, j) for i, j, _ in top if bool(m[i - 1, j - 1])]
            misses = [(i, j) for i, j, _ in top if not bool(m[i - 1, j - 1])]
            for pairs, marker, colour in ((hits, "o", "tab:green"), (misses, "x", "tab:red")):
                if pairs:
                    ax.scatter([j for _, j in pairs], [i for i, _ in pairs], marker=marker, s=18,
                               c=colour, label=f"top {len(top)} predicted: {len(pairs)} " +
                               ("true" if marker == "o" else "false"))
            if top:
                ax.legend(loc="lower left", fontsize=8)
            ax.set_title("true: C-beta distance < 8 A (black)")
        if L <= max_labels:
            ax.set_xticks(range(1, L + 1), list(residues), fontsize=6)
            ax.set_yticks(range(1, L + 1), list(residues), fontsize=6)
        ax.set_xlabel("residue j")
        ax.set_ylabel("residue i")
    fig.suptitle(title)
    return _save(fig, path)


def plot_residue_maps(maps: Tensor, tokens: list[str], panels: list[str], title: str, path: str | Path,
                      max_labels: int = 64) -> Path:
    """A protein's self-attention maps (n, T, T) over <cls> residues <eos>, one panel each (its title from
    `panels`: a layer, or a head of one layer), row = residue looking (query), column = residue looked at (key);
    axes labelled by residue letters when T <= max_labels."""
    fig = map_grid(maps, tokens, panels, side=max(3.2, min(6.5, 0.09 * maps.shape[-1] + 2.0)), max_labels=max_labels,
                   fontsize=6, axis_labels=("residue looked at (key)", "residue looking (query)"))
    fig.suptitle(title)
    return _save(fig, path)
