"""Language codes and names: auto, names, one code per language across the two models' vocabularies."""

from __future__ import annotations

import pytest

from xdna_ep.languages import LANGUAGES, language_name, normalize_language
from xdna_ep.transcribe import TranscribeOptions


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, None), ("auto", None), ("AUTO", None), ("", None),
        ("en", "en"), ("EN", "en"), ("English", "en"), (" german ", "de"), ("Mandarin", "zh"),
        ("iw", "he"), ("he", "he"), ("Hebrew", "he"), ("haitian creole", "ht"), ("jv", "jw"),
    ],
)
def test_normalize_language(value, code):
    assert normalize_language(value) == code


@pytest.mark.parametrize("value", ["xx", "Klingon", "e n"])
def test_unknown_language_is_refused_by_name(value):
    with pytest.raises(ValueError, match=f"unknown language '{value}'"):
        normalize_language(value)


def test_every_code_of_both_vocabularies_is_known_and_hebrew_is_he(tiny_en_model, base_model):
    # the tiny.en package's tokenizer.json spells Hebrew <|iw|>, base's <|he|>: both show "he"
    for model in (tiny_en_model, base_model):
        tokenizer = model.tokenizer
        assert set(tokenizer.language_tokens) <= set(LANGUAGES), model.name
        assert "he" in tokenizer.language_tokens and "iw" not in tokenizer.language_tokens, model.name
        assert tokenizer.language_token("iw") == tokenizer.language_token("he") == tokenizer.language_tokens["he"]
    assert tiny_en_model.tokenizer.tokenizer.id_to_token(tiny_en_model.tokenizer.language_tokens["he"]) == "<|iw|>"
    assert base_model.tokenizer.tokenizer.id_to_token(base_model.tokenizer.language_tokens["he"]) == "<|he|>"


def test_options_take_auto_and_names():
    assert TranscribeOptions.from_kwargs(language="auto").decoding.language is None
    assert TranscribeOptions.from_kwargs(language="German").decoding.language == "de"
    assert TranscribeOptions.from_kwargs(language="iw").decoding.language == "he"
    with pytest.raises(ValueError, match="unknown language 'Elvish'"):
        TranscribeOptions.from_kwargs(language="Elvish")
    assert language_name("iw") == "Hebrew"
