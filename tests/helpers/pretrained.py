"""Helpers of the tests/test_pretrained_*.py files: the CLIs with a chosen environment, tiny class folders."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from helpers.cli import command
from helpers.config import ROOT


def cli(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run train.py / predict.py / ... on one thread in a new interpreter, with `env` (read at import time, as
    HF_HOME is): a pretrained source's command line that does not depend on the environment runs in process
    (helpers.cli.command)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          check=False, timeout=600)


def fake_hub_cache(home, repo_id: str, files) -> None:
    """A Hugging Face cache under `home` holding `files` as the snapshot of repo_id (what a download leaves)."""
    commit = "0" * 40
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files:
        (snapshot / f.name).symlink_to(f)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random weights far from any init (a zero or unit tensor would hide a mapping error)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def image_folder(root: Path, classes: int = 2, per_class: int = 10) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(40, 48, 3, generator=g) * 255 * (c + 1) / classes).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def write_wav(path: Path, seconds: float, pitch: float, rate: int = 16000, seed: int = 0) -> Path:
    """A 16-bit PCM wav: a rising tone with its harmonics and some noise, as a recording would be stored."""
    import soundfile as sf

    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    phase = 2 * math.pi * pitch * (t + 0.5 * t**2)
    wave = sum(torch.sin(k * phase) / k for k in (1, 2, 3)) * 0.3 + 0.02 * torch.randn(len(t), generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave.numpy(), rate, subtype="PCM_16")
    return path


def audio_folder(root: Path, classes: int = 2, per_class: int = 6, seconds: float = 0.6) -> Path:
    for c in range(classes):
        for i in range(per_class):
            write_wav(root / f"class{c}" / f"{i}.wav", seconds, 200.0 * (c + 1) + 10 * i, seed=i)
    return root


def page_data(path: Path) -> dict:
    """The payload of an explorer page (viz/explorer/page.py), read back from its JSON tag; the page must be
    self-contained (nothing fetched over the network)."""
    text = path.read_text(encoding="utf-8")
    assert 'src="http' not in text and "src='http" not in text
    found = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', text, re.DOTALL)
    assert found, f"{path} holds no payload"
    return json.loads(found.group(1).replace("<\\/", "</"))


def assert_predicts_from_source(folder: Path, path: Path, out: Path, kind: str, label: str = "LABEL_") -> dict:
    """predict.py straight from a saved source: labels from its config (`label` in them), attention pictures and
    the explorer page written, the page self-contained and of `kind`. Returns the page's payload."""
    page = out / "page.html"
    proc = command("predict.py", str(folder), str(path), "--attention-dir", str(out), "--html", str(page),
                   "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert label in proc.stdout and list(out.glob("*_attention.png"))
    assert f'"kind":"{kind}"' in page.read_text(encoding="utf-8")
    data = page_data(page)
    assert data["kind"] == kind and data["prediction"]["top"]
    return data
