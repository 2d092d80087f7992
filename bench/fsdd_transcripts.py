"""Write a data=transcripts folder from the Free Spoken Digit Dataset (FSDD, CC BY-SA 4.0): the recordings of some
speakers with their digit as a word, split by take so that the test takes are never trained on.

    python bench/fsdd_transcripts.py <fsdd recordings> <out folder> [--speakers george,nicolas]

FSDD names its files {digit}_{speaker}_{take}.wav (50 takes of each digit per speaker, 8 kHz mono). Written:
out/train/ takes 0-4, out/val/ take 40, out/test/ takes 45-47 (copies of the wavs, `name.txt` = "zero" ...
"nine"), the split docs/whisper_finetune.md measures.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TAKES = {"train": range(0, 5), "val": range(40, 41), "test": range(45, 48)}


def write(recordings: Path, out: Path, speakers: list[str]) -> dict[str, int]:
    counts = {}
    for split, takes in TAKES.items():
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for speaker in speakers:
            for digit, word in enumerate(WORDS):
                for take in takes:
                    name = f"{digit}_{speaker}_{take}"
                    source = recordings / f"{name}.wav"
                    if not source.is_file():
                        raise SystemExit(f"error: {source} does not exist (expected FSDD's recordings/)")
                    shutil.copyfile(source, folder / f"{name}.wav")
                    (folder / f"{name}.txt").write_text(word + "\n")
                    n += 1
        counts[split] = n
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--speakers", default="george,nicolas")
    args = parser.parse_args()
    print(write(args.recordings, args.out, args.speakers.split(",")))


if __name__ == "__main__":
    main()
