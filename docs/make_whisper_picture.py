"""Draw docs/whisper_words.png: one Free Spoken Digit Dataset recording, a Whisper source's log-mel spectrogram
of it, the alignment heads' cross-attention of each token over time and the word timestamps (docs/whisper_words.md).

    python docs/make_whisper_picture.py <whisper source> [--recording 7_jackson_12.wav] [--out docs/whisper_words.png]

The source is anything predict.py reads (a converted folder, hf:openai/whisper-tiny.en, pkg:...). FSDD recordings
are 8 kHz: they are resampled to Whisper's 16 kHz as predict.py reads any wav (a note says so). The model runs
once through inference/ (Predictor.predict with maps and words), as predict.py --words --attention-dir does; the
picture shows the mean of the alignment heads, the map the words were aligned on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

FSDD = ROOT.parent / "shared" / "datasets" / "fsdd" / "recordings"
CREDIT = "Recording: Free Spoken Digit Dataset (CC BY-SA 4.0), {name}"


def draw(source: str, recording: Path, out: Path) -> list[str]:
    """The picture of one recording; returns the lines predict.py --words prints for it."""
    import torch

    from inference.inputs import read
    from inference.load import load
    from inference.speech_words import word_lines
    from viz import plots

    predictor = load(source)
    notes: list[str] = []
    p = predictor.predict(read(predictor, str(recording), notes), maps=True, words=True, notes=notes)
    start = p.prompt_length - 1  # the query that produced the first generated token
    heads = p.alignment_heads
    cross = torch.stack([p.maps[f"decoder.{layer}.cross_attn"][0, h, start:] for layer, h in heads]).mean(0)
    position = p.frame_seconds * p.shown.shape[-1] / cross.shape[-1]
    title = (f"{recording.name} -> {p.text!r}\ncross-attention: mean of the alignment heads "
             f"{[list(pair) for pair in heads]}; dashed: word starts (DTW)")
    plots.plot_token_time(p.shown, cross.float(), p.target_tokens, title, out, p.frame_seconds,
                          [(w.text, w.start, w.end) for w in p.words] or None, until=p.covered * position,
                          credit=CREDIT.format(name=recording.name))
    return [f"note: {line}" for line in notes] + [p.text or ""] + word_lines(p.words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a Whisper source predict.py reads")
    parser.add_argument("--recording", default="7_jackson_12.wav", help="an FSDD file name, or a path to a wav")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "whisper_words.png")
    args = parser.parse_args(argv)
    recording = Path(args.recording)
    recording = recording if recording.is_file() else FSDD / args.recording
    if not recording.is_file():
        print(f"error: {args.recording}: no such recording (FSDD is read from {FSDD})", file=sys.stderr)
        return 2
    for line in draw(args.source, recording, args.out):
        print(line)
    print(f"  picture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
