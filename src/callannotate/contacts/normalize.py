"""Normalised keys for matching: phone numbers (E.164), names and e-mail addresses.

Names: lower case, ё -> е, Cyrillic transliterated to a Latin skeleton in which common
spelling variants collapse (``kh``/``h``, ``y``/``i``/``j``, ``ts``/``c``...), patronymics and
initials dropped, words sorted. So "Иван Сергеевич Петров", "ПЕТРОВ Иван" and "Ivan Petrov"
share the key ``ivan petrov``.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from callannotate.contacts.schemas import ContactFields

_TRANSLIT = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh",
    "з": "z", "и": "i", "й": "i", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "і": "i", "ї": "yi", "є": "ye", "ґ": "g",
}  # fmt: skip

# Latin spellings of the same sound, folded to one form (order matters: longest first).
_FOLDS = (
    ("shch", "sh"), ("sch", "sh"), ("tch", "ch"), ("kh", "h"), ("zh", "j"), ("ts", "c"),
    ("tz", "c"), ("ks", "x"), ("ck", "k"), ("ph", "f"), ("w", "v"), ("q", "k"),
    ("yu", "u"), ("iu", "u"), ("ju", "u"), ("iy", "i"), ("ii", "i"), ("yi", "i"), ("ij", "i"),
    ("ya", "a"), ("ia", "a"), ("ja", "a"), ("ye", "e"), ("je", "e"), ("yo", "e"), ("jo", "e"),
    ("y", "i"), ("j", "i"), ("ee", "i"), ("oo", "u"), ("ou", "u"),
)  # fmt: skip

_PATRONYMIC = re.compile(r"(ovich|evich|ich|ovna|evna|ichna|inichna)$")
_PATRONYMIC_CYR = re.compile(r"(ович|евич|ьич|ич|овна|евна|ична|инична)$")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def normalize_phone(value: str, region: str = "RU") -> str | None:
    """E.164 (``+79161234567``) of ``value`` read in ``region``; None when it is no number."""
    raw = value.strip()
    if not raw:
        return None
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    try:
        number = phonenumbers.parse(raw, region.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    return value.strip().lower()


def _fold(word: str) -> str:
    word = unicodedata.normalize("NFKD", word)
    word = "".join(ch for ch in word if not unicodedata.combining(ch))
    latin = "".join(_TRANSLIT.get(ch, ch) for ch in word)
    for old, new in _FOLDS:
        latin = latin.replace(old, new)
    # doubled letters ("Philipp", "Anna") are spelt single in half the transliterations
    latin = re.sub(r"(.)\1+", r"\1", latin)
    return re.sub(r"(?<=[^aeiou])er$", "r", latin)  # Alexander = Aleksandr, Peter = Petr


def name_tokens(text: str) -> list[str]:
    """Folded words of a name without patronymics and one-letter initials."""
    words = [w.lower().replace("ё", "е") for w in _WORD.findall(text)]
    keep = []
    for word in words:
        if len(word) <= 1:
            continue
        if len(words) >= 3 and (_PATRONYMIC_CYR.search(word) or _PATRONYMIC.search(word)):
            continue  # a third word like "Сергеевич" / "Sergeevna"
        keep.append(_fold(word))
    return keep


def name_key(fields: ContactFields) -> str | None:
    """The matching key of a contact's name; None when it has fewer than two words."""
    if fields.given or fields.family:
        tokens = name_tokens(f"{fields.given} {fields.family}")
    else:
        tokens = name_tokens(fields.fn)
    tokens = [t for t in tokens if t]
    if len(tokens) < 2:
        return None
    return " ".join(sorted(tokens))


def search_text(fields: ContactFields) -> str:
    """Lower-case text searched by ``GET /contacts?q=``: names, org, e-mails, folded names."""
    parts = [fields.display_name(), fields.family, fields.given, fields.additional, fields.org]
    parts += [e.value for e in fields.emails]
    plain = " ".join(p for p in parts if p).lower().replace("ё", "е")
    folded = " ".join(name_tokens(f"{fields.display_name()} {fields.family} {fields.given}"))
    return f"{plain} {folded}"


def fold_query(text: str) -> list[str]:
    """Words of a search query in both plain and folded forms."""
    plain = text.strip().lower().replace("ё", "е")
    return [plain] + [t for t in name_tokens(plain) if t]
