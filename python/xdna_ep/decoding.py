"""Decoding one 30-s window: prompt, greedy or temperature sampling, and Whisper's logit filters.

Follows openai-whisper's ``decoding.py``: suppress blank at the start, suppress non-speech and
special tokens, timestamp rules (pairs, monotonic, ``max_initial_timestamp``, timestamp when their
total probability beats any text token), at most ``sample_len`` tokens, ``no_speech_prob`` from the
first step's logits at ``<|startoftranscript|>``, language detection for multilingual models.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from xdna_ep.tokenizer import TASKS, TIME_PRECISION

if TYPE_CHECKING:
    from xdna_ep.model import WhisperModel
    from xdna_ep.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodingOptions:
    """How one window is decoded. Validated on construction (ValueError naming the bad value)."""

    # "transcribe" (speech -> text in its language) or "translate" (speech -> English text)
    task: str = "transcribe"
    # language code ("en", "de", ...); None detects it (multilingual models) or means "en" (English-only)
    language: str | None = None
    # 0 decodes greedily (argmax); > 0 samples from softmax(logits / temperature)
    temperature: float = 0.0
    # candidates sampled when temperature > 0; the most likely one (sum logprob / length) is kept
    best_of: int = 5
    # seed of the sampling RNG, so that a run with temperature > 0 is reproducible
    seed: int = 0
    # maximum number of tokens to sample; None means half the decoder context (224)
    sample_len: int | None = None
    # text only (<|notimestamps|> in the prompt) instead of timestamped segments
    without_timestamps: bool = False
    # latest first timestamp allowed, in seconds (None: no limit)
    max_initial_timestamp: float | None = 1.0
    # token ids never sampled; -1 stands for the non-speech symbols of Tokenizer.non_speech_tokens
    suppress_tokens: tuple[int, ...] = (-1,)
    # forbid a blank or <|endoftext|> as the first sampled token
    suppress_blank: bool = True
    # text, or token ids, of the preceding speech, given after <|startofprev|> to condition the model
    prompt: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature!r}")
        if self.best_of < 1:
            raise ValueError(f"best_of must be >= 1, not {self.best_of!r}")
        if self.sample_len is not None and self.sample_len < 1:
            raise ValueError(f"sample_len must be >= 1 or None, not {self.sample_len!r}")
        if self.max_initial_timestamp is not None and self.max_initial_timestamp < 0:
            raise ValueError(f"max_initial_timestamp must be >= 0 or None, not {self.max_initial_timestamp!r}")
        if isinstance(self.suppress_tokens, list):
            object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))


@dataclass(frozen=True)
class DecodingResult:
    """The outcome of decoding one window."""

    tokens: list[int]  # sampled tokens, without the prompt and without <|endoftext|>
    text: str
    language: str
    avg_logprob: float  # sum of the sampled tokens' log probabilities / (len(tokens) + 1)
    no_speech_prob: float  # P(<|nospeech|>) at <|startoftranscript|> of the first step
    temperature: float
    compression_ratio: float  # len(text) / len(zlib(text)): high means repetitive
    language_probs: dict[str, float] | None = field(default=None, repr=False)


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression (repetitive text compresses well)."""
    text_bytes = text.encode("utf-8")
    if not text_bytes:
        return 0.0
    return len(text_bytes) / len(zlib.compress(text_bytes))


def check_model_options(model: WhisperModel, options: DecodingOptions) -> None:
    """Reject options the model cannot honour (an English-only model has no other language or task)."""
    tokenizer = model.tokenizer
    if options.language is not None:
        tokenizer.language_token(options.language)  # ValueError for an unknown code
    if not model.is_multilingual:
        if options.language not in (None, "en"):
            raise ValueError(
                f"model {model.name} is English-only: language {options.language!r} needs a multilingual model"
            )
        if options.task != "transcribe":
            raise ValueError(f"model {model.name} is English-only: task {options.task!r} needs a multilingual model")


def detect_language(model: WhisperModel, audio_features: np.ndarray) -> tuple[str, dict[str, float]]:
    """Most likely spoken language of one window: (code, {code: probability}).

    ``audio_features``: (1, n_audio_ctx, n_audio_state). Runs the decoder on ``<|startoftranscript|>``
    alone and compares the logits of the language tokens. English-only models return ("en", {"en": 1}).
    """
    tokenizer = model.tokenizer
    if not model.is_multilingual:
        return "en", {"en": 1.0}
    state = model.new_decoder_state(audio_features)
    logits = model.decode_step(state, np.array([[tokenizer.sot]]))[0, 0]  # (n_vocab,)
    codes = list(tokenizer.language_tokens)
    language_logits = logits[list(tokenizer.language_tokens.values())].astype(np.float64)
    probs = np.exp(language_logits - language_logits.max())
    probs /= probs.sum()
    return codes[int(np.argmax(probs))], dict(zip(codes, probs.tolist()))


def initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, language: str, n_text_ctx: int) -> list[int]:
    """The prompt fed before sampling: [<|startofprev|>, previous text...,] <|sot|>, [language, task,]
    [<|notimestamps|>]. The previous text keeps its last ``n_text_ctx // 2 - 1`` tokens."""
    tokens = tokenizer.sot_sequence(language, options.task)
    if options.without_timestamps:
        tokens.append(tokenizer.no_timestamps)
    if options.prompt:
        if isinstance(options.prompt, str):
            prompt_tokens = tokenizer.encode(" " + options.prompt.strip())
        else:
            prompt_tokens = list(options.prompt)
        tokens = [tokenizer.sot_prev] + prompt_tokens[-(n_text_ctx // 2 - 1):] + tokens
    return tokens


class LogitFilter:
    """openai-whisper's logit filters for one decoding pass, applied in place to (batch, n_vocab) logits."""

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions, sample_begin: int) -> None:
        self.tokenizer = tokenizer
        self.sample_begin = sample_begin
        self.suppress_at_begin = tokenizer.encode(" ") + [tokenizer.eot] if options.suppress_blank else []
        self.suppress = np.array(tokenizer.suppress_tokens(options.suppress_tokens), dtype=np.int64)
        self.timestamps = not options.without_timestamps
        self.max_initial_timestamp_index = None
        if options.max_initial_timestamp is not None:
            self.max_initial_timestamp_index = round(options.max_initial_timestamp / TIME_PRECISION)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        """``logits`` (batch, n_vocab) for the next token after ``tokens`` (batch, n)."""
        if tokens.shape[1] == self.sample_begin and self.suppress_at_begin:
            logits[:, self.suppress_at_begin] = -np.inf
        logits[:, self.suppress] = -np.inf
        if self.timestamps:
            self._apply_timestamp_rules(logits, tokens)

    def _apply_timestamp_rules(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        timestamp_begin = self.tokenizer.timestamp_begin
        eot = self.tokenizer.eot
        logits[:, self.tokenizer.no_timestamps] = -np.inf  # the prompt decided: timestamps on
        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin:]
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= timestamp_begin
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= timestamp_begin
            # timestamps come in pairs (start, end), except directly before <|endoftext|>
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed: text must follow
                    logits[k, timestamp_begin:] = -np.inf
                else:  # a lone timestamp: only its partner or <|endoftext|> may follow
                    logits[k, :eot] = -np.inf
            timestamps = sampled[sampled >= timestamp_begin]
            if timestamps.size > 0:
                # timestamps never decrease; a segment ending needs a non-zero length
                if last_was_timestamp and not penultimate_was_timestamp:
                    timestamp_last = timestamps[-1]
                else:
                    timestamp_last = timestamps[-1] + 1
                logits[k, timestamp_begin:timestamp_last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :timestamp_begin] = -np.inf  # start with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, timestamp_begin + self.max_initial_timestamp_index + 1:] = -np.inf
        # when the timestamps together are more likely than any single text token, take a timestamp
        logprobs = log_softmax(logits)
        for k in range(tokens.shape[0]):
            timestamp_logprob = _logsumexp(logprobs[k, timestamp_begin:])
            max_text_token_logprob = logprobs[k, :timestamp_begin].max()
            if timestamp_logprob > max_text_token_logprob:
                logits[k, :timestamp_begin] = -np.inf


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis; -inf logits stay -inf."""
    peak = logits.max(axis=-1, keepdims=True)
    shifted = logits - peak
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(values: np.ndarray) -> float:
    peak = values.max()
    if not np.isfinite(peak):
        return float(peak)
    return float(peak + np.log(np.exp(values - peak).sum()))


def decode(
    model: WhisperModel,
    audio_features: np.ndarray,
    options: DecodingOptions = DecodingOptions(),
    language_probs: dict[str, float] | None = None,
) -> DecodingResult:
    """Decode one window: ``audio_features`` (1, n_audio_ctx, n_audio_state) -> tokens and text.

    With ``temperature == 0`` one greedy pass; with ``temperature > 0`` ``best_of`` samples decoded as
    one batch, of which the most likely (sum logprob / length) is returned.
    """
    tokenizer = model.tokenizer
    check_model_options(model, options)
    language = options.language
    if language is None:
        if model.is_multilingual:
            language, language_probs = detect_language(model, audio_features)
        else:
            language = "en"
    n_text_ctx = model.dims.n_text_ctx
    sample_len = options.sample_len or n_text_ctx // 2
    prompt = initial_tokens(tokenizer, options, language, n_text_ctx)
    sample_begin = len(prompt)
    sot_index = prompt.index(tokenizer.sot)
    if sample_begin >= n_text_ctx:
        raise ValueError(f"the prompt ({sample_begin} tokens) fills the decoder context ({n_text_ctx})")

    n_group = options.best_of if options.temperature > 0 else 1
    rng = np.random.default_rng(options.seed)
    logit_filter = LogitFilter(tokenizer, options, sample_begin)
    tokens = np.tile(np.array(prompt, dtype=np.int64), (n_group, 1))  # (n_group, n)
    sum_logprobs = np.zeros(n_group, dtype=np.float64)
    state = model.new_decoder_state(audio_features)

    # first step: the prompt, the same for every candidate, runs once; the cache is then repeated
    # logits only where they are read: at <|startoftranscript|> (no-speech probability) and the last position
    logits = model.decode_step(state, tokens[:1], positions=[sot_index, -1])  # (1, 2, n_vocab)
    probs_at_sot = np.exp(log_softmax(logits[0, 0].astype(np.float64)))
    no_speech_prob = float(probs_at_sot[tokenizer.no_speech])
    logits = np.repeat(logits[:, -1], n_group, axis=0)  # (n_group, n_vocab)
    state.repeat(n_group)
    for step in range(sample_len):
        if step > 0:
            logits = model.decode_step(state, tokens[:, -1:])[:, -1]  # (n_group, n_vocab)
        logits = logits.astype(np.float32, copy=True)
        logit_filter.apply(logits, tokens)

        if options.temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:  # Gumbel-max: argmax(logits / T + Gumbel noise) samples softmax(logits / T)
            gumbel = -np.log(-np.log(rng.uniform(size=logits.shape)))
            next_tokens = (logits / options.temperature + gumbel).argmax(axis=-1)
        logprobs = log_softmax(logits)
        finished = tokens[:, -1] == tokenizer.eot
        sum_logprobs += np.where(finished, 0.0, logprobs[np.arange(n_group), next_tokens])
        next_tokens[finished] = tokenizer.eot
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
        if (next_tokens == tokenizer.eot).all() or tokens.shape[1] > n_text_ctx:
            break

    candidates = []
    for row in tokens[:, sample_begin:].tolist():
        candidates.append(row[: row.index(tokenizer.eot)] if tokenizer.eot in row else row)
    # most likely candidate by sum logprob / length (openai-whisper's ranking without length penalty)
    best = int(np.argmax([lp / max(len(c), 1) for lp, c in zip(sum_logprobs, candidates)]))
    best_tokens = candidates[best]
    text = tokenizer.decode(best_tokens)
    return DecodingResult(
        tokens=best_tokens,
        text=text,
        language=language,
        avg_logprob=float(sum_logprobs[best] / (len(best_tokens) + 1)),
        no_speech_prob=no_speech_prob,
        temperature=options.temperature,
        compression_ratio=compression_ratio(text),
        language_probs=language_probs,
    )
