"""Language codes and names: one code per language across models, ``auto``, names as well as codes.

Whisper's vocabularies spell a few languages differently: the tiny.en package's ``tokenizer.json``
has ``<|iw|>`` for Hebrew where base has ``<|he|>``. Every code the project shows or accepts goes
through ``canonical_language``, so Hebrew is ``he`` with every model (openai-whisper's and
faster-whisper's spelling), and ``iw``, ``Hebrew`` or ``hebrew`` all mean it.

``normalize_language`` is what the CLI, the Python API and the server call on a user's value before
any model is loaded: ``None``, ``""`` and ``auto`` mean "detect"; a code or an English name (any case)
gives the canonical code; anything else is a ValueError that lists what is accepted.
"""

from __future__ import annotations

# openai-whisper's code -> English name, in its order (its tokenizer.LANGUAGES); "yue" only in large-v3
LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala", "ha": "hausa",
    "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

# other spellings of a code -> the canonical one (old ISO 639 codes some vocabularies use, ISO for Javanese)
CODE_ALIASES: dict[str, str] = {"iw": "he", "jv": "jw", "in": "id", "ji": "yi"}

# other English names -> code (openai-whisper's TO_LANGUAGE_CODE additions)
NAME_ALIASES: dict[str, str] = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}

# values that mean "detect the language" (whisper.cpp's idiom is "auto")
AUTO = ("auto", "")

_BY_NAME = {name: code for code, name in LANGUAGES.items()} | NAME_ALIASES


def canonical_language(code: str) -> str:
    """The one code used for ``code``'s language everywhere (``iw`` -> ``he``); other codes unchanged."""
    return CODE_ALIASES.get(code, code)


def normalize_language(value: str | None) -> str | None:
    """A user's language -> canonical code, or None for "detect".

    Accepts None, ``auto`` or ``""`` (detect), a code in any case (``EN``, ``iw``) or an English name
    (``English``, ``haitian creole``, ``Mandarin``). ValueError naming the value otherwise.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"language must be a code or a name, not {value!r}")
    key = value.strip().lower()
    if key in AUTO:
        return None
    code = canonical_language(key)
    if code in LANGUAGES:
        return code
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise ValueError(
        f"unknown language {value!r}: give 'auto', a code ({', '.join(LANGUAGES)}) or an English name such as 'German'"
    )


def language_name(code: str) -> str:
    """English name of a code, capitalised (``he`` -> ``Hebrew``); the code itself when unknown."""
    return LANGUAGES.get(canonical_language(code), code).title()
