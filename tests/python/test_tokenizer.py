"""The tokenizer: special ids of English-only and multilingual vocabularies, timestamps, suppression."""

from __future__ import annotations

import json
import re

import pytest

from xdna_ep.errors import ModelError
from xdna_ep.models.registry import PACKAGED
from xdna_ep.tokenizer import TIME_PRECISION, Tokenizer

# model -> (multilingual, n_vocab with the 1501 timestamp tokens, eot id)
VOCABULARIES = {"tiny.en": (False, 51864, 50256), "base": (True, 51865, 50257)}


def _aux_folder(name: str):
    return PACKAGED[name].aux_folder()  # tokenizer.json and config.json shipped with the weights


@pytest.fixture(scope="module", params=sorted(VOCABULARIES))
def named_tokenizer(request) -> tuple[str, Tokenizer]:
    multilingual = VOCABULARIES[request.param][0]
    return request.param, Tokenizer(_aux_folder(request.param) / "tokenizer.json", multilingual)


def test_special_ids_and_timestamp_range(named_tokenizer):
    name, tokenizer = named_tokenizer
    multilingual, n_vocab, eot = VOCABULARIES[name]
    assert tokenizer.eot == eot
    assert tokenizer.sot == eot + 1
    assert tokenizer.timestamp_begin == tokenizer.no_timestamps + 1
    assert n_vocab - tokenizer.timestamp_begin == 1501  # <|0.00|> .. <|30.00|>
    assert tokenizer.tokenizer.get_vocab_size() == tokenizer.timestamp_begin  # tokenizer.json has no timestamps
    assert tokenizer.tokenizer.id_to_token(tokenizer.no_speech) in ("<|nospeech|>", "<|nocaptions|>")
    assert tokenizer.language_tokens["en"] == tokenizer.sot + 1
    assert len(tokenizer.language_tokens) == 99


def test_sot_sequence(named_tokenizer):
    name, tokenizer = named_tokenizer
    if tokenizer.multilingual:
        de = tokenizer.language_token("de")
        assert tokenizer.sot_sequence("de", "translate") == [tokenizer.sot, de, tokenizer.translate]
        with pytest.raises(ValueError, match="multilingual model needs a language"):
            tokenizer.sot_sequence(None)
    else:
        assert tokenizer.sot_sequence("en") == [tokenizer.sot]
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        tokenizer.language_token("xx")
    with pytest.raises(ValueError, match="unknown task"):
        tokenizer.sot_sequence("en", "summarize")


def test_timestamps_are_decoded_from_ids_beyond_the_vocabulary(named_tokenizer):
    _, tokenizer = named_tokenizer
    text = tokenizer.encode(" Hello world.")
    begin = tokenizer.timestamp_begin
    tokens = [begin, *text, begin + 54, tokenizer.eot]
    assert tokenizer.decode(tokens) == " Hello world."
    assert tokenizer.decode_with_timestamps(tokens) == "<|0.00|> Hello world.<|1.08|>"
    assert tokenizer.timestamp_seconds(begin + 1500) == pytest.approx(30.0, abs=1e-9)
    assert tokenizer.timestamp_seconds(begin + 1) == pytest.approx(TIME_PRECISION, abs=1e-12)
    with pytest.raises(ValueError, match="not a timestamp"):
        tokenizer.timestamp_seconds(text[0])


def test_non_speech_tokens_match_faster_whisper(named_tokenizer):
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer as FasterWhisperTokenizer

    name, tokenizer = named_tokenizer
    reference = FasterWhisperTokenizer(
        tokenizers.Tokenizer.from_file(str(_aux_folder(name) / "tokenizer.json")),
        tokenizer.multilingual, task="transcribe", language="en",
    )
    assert tokenizer.non_speech_tokens == reference.non_speech_tokens


def test_suppress_tokens_match_the_models_own_list(named_tokenizer):
    name, tokenizer = named_tokenizer
    config = json.loads((_aux_folder(name) / "config.json").read_text())
    assert list(tokenizer.suppress_tokens((-1,))) == sorted(config["suppress_ids"])
    assert tokenizer.encode(" ") + [tokenizer.eot] == config["suppress_ids_begin"]
    assert set(tokenizer.suppress_tokens((7, 8))) >= {7, 8, tokenizer.sot, tokenizer.no_speech}
    assert not set(tokenizer.suppress_tokens(())) & set(tokenizer.non_speech_tokens)


def test_missing_or_foreign_tokenizer_file(tmp_path):
    with pytest.raises(ModelError, match="cannot load tokenizer"):
        Tokenizer(tmp_path / "tokenizer.json", multilingual=False)
    import tokenizers
    from tokenizers.models import WordLevel

    foreign = tokenizers.Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    foreign.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelError, match=re.escape("no <|endoftext|> token")):
        Tokenizer(tmp_path / "tokenizer.json", multilingual=False)
