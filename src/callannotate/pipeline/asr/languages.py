"""The language codes Whisper decodes: what a ``language`` option may name besides ``auto``.

faster-whisper refuses any other code with a ``ValueError`` only once decoding starts, after a
job has been queued, decoded and diarized; options a caller sends are checked against these
codes up front instead (``pipeline.types.REQUEST_CONTEXT``). They are faster-whisper's own
(``faster_whisper.tokenizer._LANGUAGE_CODES``; a test keeps the two equal), written out so that
checking options imports nothing heavy.
"""

from __future__ import annotations

WHISPER_LANGUAGES: frozenset[str] = frozenset({
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he",
    "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la",
    "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl",
    "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so",
    "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz",
    "vi", "yi", "yo", "zh", "yue",
})  # fmt: skip
