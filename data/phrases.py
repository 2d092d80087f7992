"""The embedded translation corpus: English phrases and their translation, both written by
CLDR locale data (through Babel), so every pair is a correct human-curated rendering.

Each phrase is a date, a date and time, a date interval, a relative time ("3 days ago" ->
"vor 3 Tagen"), an amount of money, a measurement, a percentage, or a list of weekday / month /
language / country names joined by the language's own list pattern ("and" / "or"). The target
language reorders (day before month, "vor" before the number), inflects (Tag -> Tagen, kilometer
-> kilometers) and reformats numbers (12,345.67 -> 12.345,67), so copying does not work.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from typing import Callable

from babel import Locale, UnknownLocaleError, dates, lists, numbers, units

from utils.errors import UserError

SOURCE_LANG = "en"
_UNITS = [
    "length-kilometer", "length-meter", "length-centimeter", "length-mile", "length-foot", "mass-kilogram",
    "mass-gram", "mass-pound", "volume-liter", "volume-milliliter", "duration-hour", "duration-minute",
    "duration-second", "duration-day", "duration-week", "duration-month", "duration-year",
    "temperature-celsius", "speed-kilometer-per-hour", "digital-gigabyte", "digital-megabyte",
    "power-kilowatt", "area-hectare", "energy-kilocalorie",
]
_CURRENCIES = ["EUR", "USD", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "MXN", "SEK", "BRL"]
_DELTAS = [("seconds", 59), ("minutes", 59), ("hours", 23), ("days", 6), ("weeks", 3)]
_SKELETONS = ["yMMMd", "MMMd", "yMMMEd", "MMMEd"]


def _clean(text: str) -> str:
    # CLDR uses no-break and narrow no-break spaces (3:45 PM, 12 345); NFKC makes them plain spaces.
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _names(locale: Locale, kind: str) -> dict[str, str]:
    if kind == "weekday":
        return {str(i): locale.days["format"]["wide"][i] for i in range(7)}
    if kind == "month":
        return {str(i): locale.months["stand-alone"]["wide"][i] for i in range(1, 13)}
    table = locale.languages if kind == "language" else locale.territories
    # Two-letter codes: the languages and countries people name, not CLDR's thousands of variants;
    # X*/Q*/ZZ are private-use codes ("Pseudo-Accents", "Unknown Region").
    return {code: name for code, name in table.items()
            if len(code) == 2 and code.isalpha() and not code.startswith(("X", "Q", "ZZ"))}


class PhraseGenerator:
    """Draws random phrase specifications and renders each in the source and the target language."""

    def __init__(self, target_lang: str = "de") -> None:
        try:
            self.src, self.tgt = Locale.parse(SOURCE_LANG), Locale.parse(target_lang)
        except (UnknownLocaleError, ValueError) as err:
            raise UserError(f"target_lang {target_lang!r} is not a CLDR locale Babel knows "
                             f"(e.g. de, fr, es, it, nl, pt): {err}") from None
        if self.tgt.language == "en":
            raise UserError(f"target_lang {target_lang!r}: the source is already English; pick another language")
        # Codes present in both languages, so every drawn name renders on both sides.
        self.codes = {k: sorted(set(_names(self.src, k)) & set(_names(self.tgt, k)))
                      for k in ("weekday", "month", "language", "country")}
        self.kinds: list[tuple[Callable[[random.Random], Callable[[Locale], str]], float]] = [
            (self._date, 2.0), (self._datetime, 1.0), (self._interval, 1.0), (self._relative, 1.0),
            (self._money, 1.0), (self._measure, 1.5), (self._percent, 0.3), (self._name_list, 2.5),
        ]

    # Each method draws the values, then returns a renderer: locale -> text.
    def _day(self, rng: random.Random) -> dt.date:
        return dt.date(rng.randint(1900, 2099), 1, 1) + dt.timedelta(days=rng.randrange(365))

    def _date(self, rng: random.Random) -> Callable[[Locale], str]:
        day, style = self._day(rng), rng.choice(["full", "long", "medium"])
        return lambda loc: dates.format_date(day, style, locale=loc)

    def _datetime(self, rng: random.Random) -> Callable[[Locale], str]:
        day, time = self._day(rng), dt.time(rng.randrange(24), rng.randrange(0, 60, 5))
        style = rng.choice(["full", "long"])
        return lambda loc: loc.datetime_formats[style].format(
            dates.format_time(time, "short", locale=loc), dates.format_date(day, style, locale=loc)).replace("'", "")

    def _interval(self, rng: random.Random) -> Callable[[Locale], str]:
        start = self._day(rng)
        end = start + dt.timedelta(days=rng.randint(1, 60))
        skeleton = rng.choice(_SKELETONS)
        return lambda loc: dates.format_interval(start, end, skeleton, locale=loc)

    def _relative(self, rng: random.Random) -> Callable[[Locale], str]:
        unit, top = rng.choice(_DELTAS)
        delta = dt.timedelta(**{unit: rng.randint(1, top)}) * rng.choice([-1, 1])
        return lambda loc: dates.format_timedelta(delta, add_direction=True, threshold=10, locale=loc)

    def _money(self, rng: random.Random) -> Callable[[Locale], str]:
        amount = round(rng.choice([rng.uniform(0, 100), rng.uniform(0, 100_000)]), 2)
        currency, long = rng.choice(_CURRENCIES), rng.random() < 0.5
        return lambda loc: numbers.format_currency(amount, currency, format_type="name" if long else "standard",
                                                   locale=loc)

    def _measure(self, rng: random.Random) -> Callable[[Locale], str]:
        value = rng.choice([rng.randint(1, 100), rng.randint(100, 99_999), round(rng.uniform(0, 100), 1)])
        unit, length = rng.choice(_UNITS), rng.choice(["long", "short"])
        return lambda loc: units.format_unit(value, unit, length=length, locale=loc)

    def _percent(self, rng: random.Random) -> Callable[[Locale], str]:
        value = rng.randint(0, 1000) / 1000
        return lambda loc: numbers.format_percent(value, "#,##0.#%", locale=loc)

    def _name_list(self, rng: random.Random) -> Callable[[Locale], str]:
        kind = rng.choice(["weekday", "month", "language", "country"])
        picked = rng.sample(self.codes[kind], rng.randint(1, 4 if kind in ("weekday", "month") else 3))
        style = rng.choice(["standard", "or"])
        return lambda loc: lists.format_list([_names(loc, kind)[c] for c in picked], style=style, locale=loc)

    def pair(self, rng: random.Random) -> tuple[str, str]:
        draw = rng.choices([k for k, _ in self.kinds], weights=[w for _, w in self.kinds])[0]
        render = draw(rng)
        return _clean(render(self.src)), _clean(render(self.tgt))


def generate_phrases(target_lang: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """`count` distinct (English, target) pairs, the same for the same arguments and Babel version."""
    gen, rng = PhraseGenerator(target_lang), random.Random(seed)
    pairs: dict[str, str] = {}
    attempts = 0
    while len(pairs) < count:
        src, tgt = gen.pair(rng)
        pairs.setdefault(src, tgt)  # one translation per source sentence: no contradictory targets
        attempts += 1
        if attempts > 20 * count:
            raise RuntimeError(f"could only draw {len(pairs)} distinct phrases of the {count} asked for")
    return list(pairs.items())
