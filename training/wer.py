"""Word error rate of transcripts (jiwer), both sides normalised by data/normalize.py (docs/whisper_finetune.md)."""

from __future__ import annotations

import jiwer

from data.normalize import normalize_transcript


def word_error_rate(references: list[str], hypotheses: list[str]) -> tuple[float, int]:
    """(WER in %, reference words) of a corpus: the edits over all utterances / all reference words, both sides
    normalised (normalize_transcript)."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"{len(references)} references, {len(hypotheses)} hypotheses: expected equal, >= 1")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    return 100.0 * jiwer.wer(refs, hyps), words
