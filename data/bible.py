"""A real parallel corpus: the World English Bible and the Reina-Valera 1909 (both public domain),
aligned verse by verse, exported from Debian's SWORD modules with `diatheke`.

    apt-get install diatheke sword-text-web sword-text-sparv

Each book is exported once as OSIS (markup kept so that word boundaries survive: the plain
filter glues "God" and "created" where a footnote was), cleaned to text, and cached as a TSV
`key<TAB>english<TAB>spanish` under `<root>/bible/`.
"""

from __future__ import annotations

import html
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from tqdm import tqdm

from utils.errors import MissingDataError

INSTALL = "sudo apt-get install diatheke sword-text-web sword-text-sparv"
MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}
# The 66 books both translations have (the WEB module adds the deuterocanon, the RV does not).
BOOKS = (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth I_Samuel II_Samuel I_Kings II_Kings "
    "I_Chronicles II_Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes Song_of_Solomon Isaiah "
    "Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai "
    "Zechariah Malachi Matthew Mark Luke John Acts Romans I_Corinthians II_Corinthians Galatians Ephesians "
    "Philippians Colossians I_Thessalonians II_Thessalonians I_Timothy II_Timothy Titus Philemon Hebrews James "
    "I_Peter II_Peter I_John II_John III_John Jude Revelation_of_John"
)
BOOKS = tuple(b.replace("_", " ") for b in BOOKS.split())
# "Psalms 3:1: " at a line start, or after the psalm title that WEB repeats in front of every verse.
_KEY = re.compile(r"^(?:.*?\s\s)?((?:I{1,3} )?[A-Z][A-Za-z ]*? \d+:\d+): ")
_FOOTNOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^>]+>")


def clean_osis(text: str) -> str:
    """OSIS verse text -> plain text: footnotes dropped, adjacent word elements kept apart."""
    text = _FOOTNOTE.sub("", text)
    # "<w>God</w><w>created</w>" and "only born<w>Son</w>" are two words each.
    text = re.sub(r"(</w>|\w)<w\b", r"\1 <w", text)
    text = html.unescape(_TAG.sub("", text))
    return " ".join(text.split())


def parse_export(output: str) -> dict[str, str]:
    """diatheke OSIS output (one verse a line, "Book C:V: text", the module name last) -> {key: text}.
    A line without a key continues the verse before it; text before a key (a repeated psalm
    title) is dropped."""
    verses: dict[str, str] = {}
    key = None
    for line in output.splitlines():
        m = _KEY.match(line)
        if m:
            key, line = m.group(1), line[m.end():]
            verses[key] = ""
        elif key is None or re.fullmatch(r"\([A-Za-z0-9]+\)", line.strip()):
            continue
        verses[key] += " " + line
    cleaned = {k: clean_osis(v) for k, v in verses.items()}
    return {k: v for k, v in cleaned.items() if v}


def _diatheke() -> str:
    exe = shutil.which("diatheke")
    if exe is None:
        raise MissingDataError(f"data=bible needs the `diatheke` program and the SWORD Bible modules. Install them: {INSTALL}")
    return exe


def export_module(lang: str, books: tuple[str, ...] = BOOKS) -> dict[str, str]:
    exe = _diatheke()
    module = MODULES[lang]
    verses: dict[str, str] = {}
    for book in tqdm(books, desc=f"Exporting {module}", leave=False):
        proc = subprocess.run([exe, "-b", module, "-f", "OSIS", "-k", book], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip() or "not found" in proc.stdout[:200].lower():
            raise RuntimeError(f"diatheke could not export {book!r} from {module} ({proc.stderr.strip()[:200]}); "
                               f"is the module installed? {INSTALL}")
        verses.update(parse_export(proc.stdout))
    return verses


def load_bible(root: str | Path, books: tuple[str, ...] = BOOKS) -> list[tuple[str, str, str]]:
    """(verse key, English, Spanish) for every verse both modules have; cached as TSV under root/bible."""
    cache = Path(root) / "bible" / f"web-rv1909-{len(books)}books.tsv"
    if cache.is_file():
        rows = [line.split("\t") for line in cache.read_text(encoding="utf-8").splitlines()]
        return [(k, en, es) for k, en, es in rows]
    english, spanish = export_module("en", books), export_module("es", books)
    rows = [(k, english[k], spanish[k]) for k in english if k in spanish]
    if not rows:
        raise RuntimeError(f"no verse is present in both {MODULES['en']} and {MODULES['es']}; reinstall: {INSTALL}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Every DDP process (on every node) may export at once: a temp name of its own, then an atomic replace.
    tmp = cache.with_suffix(f".{secrets.token_hex(4)}.tmp")
    tmp.write_text("".join(f"{k}\t{en}\t{es}\n" for k, en, es in rows), encoding="utf-8")
    tmp.replace(cache)  # never leave a half-written cache behind
    return rows
