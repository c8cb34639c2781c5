"""Spell out the numbers Whisper writes as digits ("60 000" -> "шестьдесят тысяч").

Whisper prints numbers as digits; many users (and the Russian reference transcripts) want them
as words. :func:`spell_numbers_in_words` rewrites a word list, merging digit groups that Whisper
splits over several words ("60", "000"), and :func:`spell_numbers` does the same for a text.
``num2words`` (pinned ``num2words==0.5.14``) does the conversion; languages it does not know
keep their digits. Russian numbers come out in the nominative case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from callannotate.pipeline.types import Word

_NUMBER = re.compile(
    r"(?P<lead>[^\d]*?)(?P<num>\d+(?:[.,]\d+)?)(?P<suffix>%|st|nd|rd|th)?(?P<trail>[^\d]*)$"
)
_GROUP = re.compile(r"^\d{3}(?:[.,]\d+)?[^\d]*$")
_TEXT_NUMBER = re.compile(r"\d{1,3}(?:[ \u00a0\u202f,]\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?")
_PERCENT = {"ru": "процентов", "en": "percent", "de": "Prozent", "fr": "pour cent"}


@lru_cache(maxsize=64)
def _supported(lang: str) -> bool:
    from num2words import CONVERTER_CLASSES

    return lang in CONVERTER_CLASSES


def number_to_words(number: str, lang: str, ordinal: bool = False) -> str | None:
    """Words for a digit string such as ``"60000"`` or ``"2.5"``; None when not possible."""
    if not _supported(lang):
        return None
    from num2words import num2words

    cleaned = number.replace(" ", "").replace("\u00a0", "").replace("\u202f", "")
    try:
        if re.fullmatch(r"\d+[.,]\d+", cleaned):
            value: float | int = float(cleaned.replace(",", "."))
        else:
            value = int(cleaned.replace(",", ""))
        return str(num2words(value, lang=lang, to="ordinal" if ordinal else "cardinal"))
    except (ValueError, NotImplementedError, OverflowError):
        return None


def spell_numbers(text: str, lang: str) -> str:
    """``text`` with every number written in words (digit groups joined: "60 000")."""

    def repl(match: re.Match[str]) -> str:
        raw = match.group(0)
        if re.fullmatch(r"\d{1,3}(?:,\d{3})+", raw) or re.search(r"[ \u00a0\u202f]", raw):
            raw = re.sub(r"[ \u00a0\u202f,]", "", raw)
        words = number_to_words(raw, lang)
        return words if words is not None else match.group(0)

    out = _TEXT_NUMBER.sub(repl, text)
    pct = _PERCENT.get(lang)
    if pct:
        out = re.sub(r"\s*%", f" {pct}", out)
    return out


def spell_numbers_in_words(words: Sequence[Word], lang: str) -> list[Word]:
    """Words with numbers spelled out; "60" + "000" becomes one word spanning both."""
    if not _supported(lang):
        return list(words)
    out: list[Word] = []
    i = 0
    while i < len(words):
        word = words[i]
        match = _NUMBER.match(word.text)
        if match is None:
            out.append(word)
            i += 1
            continue
        digits = match.group("num")
        last = word
        trail = match.group("trail")
        suffix = match.group("suffix") or ""
        # Whisper splits "60 000" into two words; join following 3-digit groups.
        while (
            not trail
            and not suffix
            and "." not in digits
            and i + 1 < len(words)
            and _GROUP.match(words[i + 1].text)
        ):
            nxt = _NUMBER.match(words[i + 1].text)
            if nxt is None:
                break
            digits += nxt.group("num")
            trail = nxt.group("trail")
            suffix = nxt.group("suffix") or ""
            last = words[i + 1]
            i += 1
        spoken = number_to_words(digits, lang, ordinal=suffix in ("st", "nd", "rd", "th"))
        if spoken is None:
            out.append(word)
            i += 1
            continue
        if suffix == "%":
            spoken = f"{spoken} {_PERCENT.get(lang, '%')}"
        text = f"{match.group('lead')}{spoken}{trail}"
        out.append(
            word.model_copy(
                update={
                    "text": text,
                    "end": last.end,
                    "probability": min(word.probability, last.probability),
                }
            )
        )
        i += 1
    return out
