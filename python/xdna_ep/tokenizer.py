"""Whisper's tokenizer: text <-> token ids, the special tokens, and timestamp tokens.

Wraps ``tokenizers.Tokenizer`` built from the model folder's ``tokenizer.json``. That file lists the
special tokens up to ``<|notimestamps|>`` but no timestamp tokens: every id from
``timestamp_begin = no_timestamps + 1`` to the end of the model's vocabulary is the timestamp
``(id - timestamp_begin) * TIME_PRECISION`` seconds (1501 of them: 0.00 s to 30.00 s).

English-only models (vocabulary 51864, GPT-2 byte-level BPE) and multilingual models (51865) differ
in their ids; every id is looked up by its token text, never hard-coded.
"""

from __future__ import annotations

import functools
import os
import re

from xdna_ep.errors import ModelError
from xdna_ep.languages import canonical_language

TIME_PRECISION = 0.02  # seconds per timestamp token (30 s / 1500 encoder positions)
TASKS = ("transcribe", "translate")

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3}|haw)\|>$")


class Tokenizer:
    """Whisper's tokenizer for one model: English-only or multilingual.

    ``language_tokens`` maps language codes (``"en"``, ``"de"``, ...) to their token ids, in the
    model's order; the codes are canonical (``he`` even where the vocabulary spells ``<|iw|>``).
    A multilingual prompt is ``sot, language, task``; an English-only one is ``sot``.
    """

    def __init__(self, tokenizer_json: str | os.PathLike, multilingual: bool) -> None:
        import tokenizers

        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as error:  # tokenizers raises a bare Exception for missing and invalid files
            raise ModelError(f"cannot load tokenizer {tokenizer_json}: {error}") from None
        self.multilingual = multilingual
        self.eot = self._required_id("<|endoftext|>")  # end of transcript
        self.sot = self._required_id("<|startoftranscript|>")
        self.translate = self._required_id("<|translate|>")  # task token
        self.transcribe = self._required_id("<|transcribe|>")  # task token
        self.sot_lm = self._required_id("<|startoflm|>")
        self.sot_prev = self._required_id("<|startofprev|>")  # precedes the previous text (prompt)
        # <|nospeech|> in newer vocabularies, <|nocaptions|> in older ones
        self.no_speech = self._optional_id("<|nospeech|>") or self._required_id("<|nocaptions|>")
        self.no_timestamps = self._required_id("<|notimestamps|>")  # decode text only
        self.language_tokens: dict[str, int] = {}
        for token_id in range(self.sot + 1, self.translate):
            match = _LANGUAGE_TOKEN.match(self.tokenizer.id_to_token(token_id) or "")
            if match:
                self.language_tokens[canonical_language(match.group(1))] = token_id

    def _optional_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def _required_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelError(f"tokenizer has no {token} token: not a Whisper tokenizer.json")
        return token_id

    @property
    def timestamp_begin(self) -> int:
        """Id of the timestamp ``<|0.00|>``; each following id adds TIME_PRECISION seconds."""
        return self.no_timestamps + 1

    def language_token(self, language: str) -> int:
        """Id of ``<|language|>`` (``iw`` and ``he`` alike); ValueError listing the known codes for an unknown one."""
        try:
            return self.language_tokens[canonical_language(language)]
        except KeyError:
            known = ", ".join(self.language_tokens)
            raise ValueError(f"unknown language code {language!r}; known codes: {known}") from None

    def sot_sequence(self, language: str | None = "en", task: str = "transcribe") -> list[int]:
        """The tokens that start a transcript: ``[sot]`` (English-only) or ``[sot, language, task]``."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if not self.multilingual:
            return [self.sot]
        if language is None:
            raise ValueError("a multilingual model needs a language (detect it first)")
        task_token = self.transcribe if task == "transcribe" else self.translate
        return [self.sot, self.language_token(language), task_token]

    # -- text ---------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, without any special token."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: list[int]) -> str:
        """Token ids -> text; special and timestamp tokens (ids >= eot) are dropped."""
        return self.tokenizer.decode([token for token in tokens if token < self.eot])

    def decode_with_timestamps(self, tokens: list[int]) -> str:
        """Token ids -> text with timestamps written as ``<|1.08|>``; other special tokens dropped."""
        pieces: list[str] = []
        text_tokens: list[int] = []
        for token in tokens:
            if token >= self.timestamp_begin:
                pieces.append(self.decode(text_tokens))
                pieces.append(f"<|{self.timestamp_seconds(token):.2f}|>")
                text_tokens = []
            else:
                text_tokens.append(token)
        pieces.append(self.decode(text_tokens))
        return "".join(pieces)

    def timestamp_seconds(self, token: int) -> float:
        """Seconds from the start of the window meant by timestamp token ``token``."""
        if token < self.timestamp_begin:
            raise ValueError(f"token {token} is not a timestamp (they start at {self.timestamp_begin})")
        return (token - self.timestamp_begin) * TIME_PRECISION

    # -- suppression --------------------------------------------------------------------------------

    @functools.cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of speaker tags and non-speech annotations (``♪♪♪``, ``( SPEAKING FOREIGN )``,
        ``[DAVID]``), suppressed so the model does not write what is not spoken, as openai-whisper
        does; basic punctuation stays allowed, and ``-`` / ``'`` only inside words.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # U+2640..U+267F symbols share their first two UTF-8 bytes: suppressing the first token is safe
        miscellaneous = set("♩♪♫♬♭♮♯")
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def suppress_tokens(self, suppress: tuple[int, ...] = (-1,)) -> tuple[int, ...]:
        """Ids never sampled: ``suppress`` (``-1`` stands for ``non_speech_tokens``) plus the
        special tokens that must not appear in the text (task, sot, sot_prev, sot_lm, no_speech).
        """
        result = {token for token in suppress if token >= 0}
        if -1 in suppress:
            result.update(self.non_speech_tokens)
        result.update(
            {
                self.transcribe,
                self.translate,
                self.sot,
                self.sot_prev,
                self.sot_lm,
                self.no_speech,
            }
        )
        return tuple(sorted(result))
