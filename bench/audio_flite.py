"""How far does training on espeak-ng voices carry? Test a trained audio model on another synthesiser.

Speaks the same 12 classes with Debian's `flite` (5 voices: kal, kal16, awb, rms, slt; none of them
espeak-ng), at three speaking rates and two pitches, places each word in a 1 s clip with the keyword
generator's post-processing (level, coloured background noise, position), and reports accuracy with
and without noise. Needs `apt-get install flite`; without it the script says so and exits 0.

    python -m bench.audio_flite outputs/train/runs/<run> [--json bench/results_audio_flite.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from data.keywords import CLASSES, KEYWORDS, SILENCE, UNKNOWN, UNKNOWN_WORDS, KeywordSpec, coloured_noise, trim

VOICES = ("kal", "kal16", "awb", "rms", "slt")  # awb_time (a talking clock) left out
STRETCH = (0.8, 1.0, 1.25)  # duration_stretch: fast, normal, slow
F0_SHIFT = (0.85, 1.15)  # int_f0_target_mean relative to the voice's own


def speak(word: str, voice: str, stretch: float, f0: float, folder: Path, sample_rate: int) -> np.ndarray:
    import soundfile as sf
    import torchaudio.functional as AF

    out = folder / "w.wav"
    base = {"kal": 100, "kal16": 100, "awb": 110, "rms": 100, "slt": 160}[voice]
    subprocess.run(["flite", "-voice", voice, "--setf", f"duration_stretch={stretch}", "--setf",
                    f"int_f0_target_mean={base * f0:.0f}", "-t", word, "-o", str(out)], check=True)
    wave, rate = sf.read(out, dtype="float32")
    wave = trim(wave)
    return AF.resample(torch.from_numpy(wave), rate, sample_rate).numpy()


def build_set(spec: KeywordSpec, noisy: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    rng = np.random.default_rng(seed)
    n = int(spec.sample_rate * spec.clip_seconds)
    clips, labels, who = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for voice in VOICES:
            for label, name in enumerate(CLASSES):
                if name == SILENCE:
                    continue  # no synthesiser involved: nothing to learn about voices
                words = [name] * 6 if name in KEYWORDS else list(rng.choice(UNKNOWN_WORDS, 6, replace=False))
                for k, word in enumerate(words):
                    w = speak(word, voice, STRETCH[k % 3], F0_SHIFT[k // 3], Path(tmp), spec.sample_rate)[:n]
                    clip = np.zeros(n)
                    edge = min(int(spec.edge_seconds * spec.sample_rate), (n - len(w)) // 2)  # as the generator
                    start = edge + int(rng.uniform() * (n - len(w) - 2 * edge))
                    level = 10 ** (rng.uniform(*spec.gain_db) / 20) if noisy else 0.5
                    clip[start:start + len(w)] = w / (np.abs(w).max() + 1e-9) * level
                    if noisy:
                        power = np.mean((w / (np.abs(w).max() + 1e-9) * level) ** 2)
                        snr = rng.uniform(*spec.snr_db)
                        clip += coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"]))) * np.sqrt(
                            power / 10 ** (snr / 10))
                    clips.append(np.clip(clip, -1, 1).astype(np.float32))
                    labels.append(label)
                    who.append(voice)
    return torch.from_numpy(np.stack(clips)), torch.tensor(labels), who


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="run directory (uses checkpoints/best.ckpt) or checkpoint file")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if shutil.which("flite") is None:
        print("flite is not installed (apt-get install flite); skipping the other-synthesiser evaluation")
        return
    torch.set_num_threads(1)
    from utils.build import build_module
    from utils.checkpoint import load_checkpoint, resolve_checkpoint, run_config

    ckpt_file = resolve_checkpoint(args.ckpt)
    ckpt = load_checkpoint(ckpt_file)
    cfg = run_config(ckpt_file, ckpt)
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    spec = KeywordSpec(sample_rate=int(cfg.data.sample_rate), clip_seconds=float(cfg.data.clip_seconds))
    results = {"checkpoint": str(ckpt_file), "voices": list(VOICES)}
    for noisy in (False, True):
        x, y, who = build_set(spec, noisy)
        with torch.no_grad():
            pred = torch.cat([module(b) for b in x.split(128)]).argmax(-1)
        correct = (pred == y).numpy()
        key = "noisy" if noisy else "clean"
        results[key] = {"clips": len(y), "accuracy": float(correct.mean()),
                        "per_voice": {v: float(correct[[w == v for w in who]].mean()) for v in VOICES},
                        "unknown_class_accuracy": float(correct[(y == CLASSES.index(UNKNOWN)).numpy()].mean())}
        print(f"flite {key}: {correct.mean():.3f} on {len(y)} clips; per voice "
              + ", ".join(f"{v} {a:.2f}" for v, a in results[key]["per_voice"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
