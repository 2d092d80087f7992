"""Word error rate of transcripts (jiwer) after one documented text normalisation (docs/whisper_finetune.md).

Whisper writes "Seven.", "seven" or "7" for the same spoken word; a transcript file may say "seven". Scored
as they are, all but one would count as a substitution, which is a difference of spelling, not of hearing.
So both sides are normalised the same way before jiwer counts edits:

1. Unicode NFKC, lower case;
2. every character that is not a letter, a digit, an apostrophe or white space becomes a space (".", ",", "?",
   "-": "twenty-one" is two words), and an apostrophe not inside a word ('quoted') too;
3. a word that is one digit is spelled out ("7" -> "seven"); longer numbers are left as they are (no rule here
   turns "17" into "seventeen" and "one seven" both: write numbers in words in transcripts);
4. words are split on white space.

This is narrower than OpenAI's EnglishTextNormalizer (no spelling variants, contractions or number parsing): it
only removes what a transcript file cannot be expected to match (case, punctuation, digit vs word).
"""

from __future__ import annotations

import re
import unicodedata

import jiwer

DIGIT_WORDS = dict(zip("0123456789", ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                      "nine")))


def normalize_transcript(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(DIGIT_WORDS.get(word, word) for word in text.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> tuple[float, int]:
    """(WER in %, reference words) of a corpus: the edits over all utterances / all reference words, both sides
    normalised (normalize_transcript)."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"{len(references)} references, {len(hypotheses)} hypotheses: expected equal, >= 1")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    words = sum(len(r.split()) for r in refs)
    return 100.0 * jiwer.wer(refs, hyps), words
