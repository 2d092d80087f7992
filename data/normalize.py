"""The one text normalisation of transcripts, before a word error rate is counted (docs/whisper_finetune.md).

Whisper writes "Seven.", "seven" or "7" for the same spoken word; a transcript file may say "seven". Scored
as they are, all but one would count as a substitution, which is a difference of spelling, not of hearing.
So both sides are normalised the same way before jiwer counts edits (training/wer.py):

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

DIGIT_WORDS = dict(zip("0123456789", ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                      "nine")))


def normalize_transcript(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(DIGIT_WORDS.get(word, word) for word in text.split())
