"""Decoding one 30-s window: prompt, beam search, greedy or temperature sampling, Whisper's logit filters.

Follows openai-whisper's ``decoding.py``: beam search at temperature 0 (``beam_size`` beams, finished
when ``round(beam_size * patience)`` candidates have ended, ranked by sum logprob over a length
penalty), ``best_of`` samples at temperature > 0; suppress blank at the start, suppress non-speech and
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
    from xdna_ep.model import DecoderState, WhisperModel
    from xdna_ep.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodingOptions:
    """How one window is decoded. Validated on construction (ValueError naming the bad value)."""

    # "transcribe" (speech -> text in its language) or "translate" (speech -> English text)
    task: str = "transcribe"
    # language code ("en", "de", ...); None detects it (multilingual models) or means "en" (English-only)
    language: str | None = None
    # 0 decodes by beam search (or greedily with beam_size 1); > 0 samples from softmax(logits / temperature)
    temperature: float = 0.0
    # beams searched at temperature 0 (faster-whisper's default, 5); 1 decodes greedily (argmax)
    beam_size: int = 5
    # beam search ends when round(beam_size * patience) candidates have ended (arxiv:2204.05424)
    patience: float = 1.0
    # candidates are ranked by sum logprob / penalty: None divides by the length, alpha in [0, 1] by
    # ((5 + length) / 6) ** alpha (Google NMT's length penalty)
    length_penalty: float | None = None
    # candidates sampled when temperature > 0; the best ranked one is kept
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
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, not {self.beam_size!r}")
        if not self.patience > 0:
            raise ValueError(f"patience must be > 0, not {self.patience!r}")
        if round(self.beam_size * self.patience) < 1:
            raise ValueError(
                f"beam_size * patience must round to at least one candidate, not {self.beam_size} * {self.patience}"
            )
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise ValueError(f"length_penalty must be in [0, 1] or None, not {self.length_penalty!r}")
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


def _rank(candidates: list[list[int]], sum_logprobs: list[float], length_penalty: float | None) -> int:
    """Index of the best candidate by sum logprob / penalty (openai-whisper's MaximumLikelihoodRanker)."""
    scores = []
    for tokens, logprob in zip(candidates, sum_logprobs):
        length = max(len(tokens), 1)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(logprob / penalty)
    return int(np.argmax(scores))


def _top_k(logprobs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of ``logprobs`` (n_vocab,), largest first."""
    top = np.argpartition(-logprobs, k - 1)[:k]
    return top[np.argsort(-logprobs[top], kind="stable")]


def sample_candidates(
    model: WhisperModel,
    state: DecoderState,
    logits: np.ndarray,
    tokens: np.ndarray,
    logit_filter: LogitFilter,
    options: DecodingOptions,
    sample_len: int,
) -> tuple[list[list[int]], list[float]]:
    """Greedy (temperature 0) or sampled candidates, one per row of ``tokens`` (n_group, n):
    (candidates without the prompt and <|endoftext|>, their sum logprobs)."""
    eot = model.tokenizer.eot
    n_group = tokens.shape[0]
    sample_begin = tokens.shape[1]
    rng = np.random.default_rng(options.seed)
    sum_logprobs = np.zeros(n_group, dtype=np.float64)
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
        finished = tokens[:, -1] == eot
        sum_logprobs += np.where(finished, 0.0, logprobs[np.arange(n_group), next_tokens])
        next_tokens[finished] = eot
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
        if (next_tokens == eot).all() or tokens.shape[1] > model.dims.n_text_ctx:
            break
    candidates = []
    for row in tokens[:, sample_begin:].tolist():
        candidates.append(row[: row.index(eot)] if eot in row else row)
    return candidates, sum_logprobs.tolist()


def _beam_search(
    model: WhisperModel,
    state: DecoderState,
    logits: np.ndarray,
    tokens: np.ndarray,
    logit_filter: LogitFilter,
    options: DecodingOptions,
    sample_len: int,
) -> tuple[list[list[int]], list[float]]:
    """openai-whisper's BeamSearchDecoder over ``tokens`` (beam_size, n), identical prompts.

    Each step extends every beam by its ``beam_size + 1`` most likely tokens, keeps the
    ``beam_size`` best unfinished sequences (the KV cache is reordered to follow them) and collects
    the ones that ended, until ``round(beam_size * patience)`` have ended. Returns the ended
    candidates (topped up with the best unfinished ones if fewer than ``beam_size`` ended) without the
    prompt and <|endoftext|>, with their sum logprobs.
    """
    eot = model.tokenizer.eot
    beam_size = options.beam_size
    max_candidates = round(beam_size * options.patience)
    sample_begin = tokens.shape[1]
    sum_logprobs = np.zeros(beam_size, dtype=np.float64)
    finished: dict[tuple[int, ...], float] = {}
    for step in range(sample_len):
        if step > 0:
            logits = model.decode_step(state, tokens[:, -1:])[:, -1]  # (beam_size, n_vocab)
        logits = logits.astype(np.float32, copy=True)
        logit_filter.apply(logits, tokens)
        logprobs = log_softmax(logits)

        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], int] = {}
        for beam in range(tokens.shape[0]):
            prefix = tuple(tokens[beam].tolist())
            for token in _top_k(logprobs[beam], beam_size + 1).tolist():
                sequence = prefix + (token,)
                scores[sequence] = float(sum_logprobs[beam] + logprobs[beam, token])
                sources[sequence] = beam
        kept: list[tuple[int, ...]] = []
        newly_finished: dict[tuple[int, ...], float] = {}
        for sequence in sorted(scores, key=scores.get, reverse=True):
            if sequence[-1] == eot:
                newly_finished[sequence] = scores[sequence]
            else:
                kept.append(sequence)
                if len(kept) == beam_size:
                    break
        for sequence in sorted(newly_finished, key=newly_finished.get, reverse=True):
            if len(finished) >= max_candidates:
                break  # the candidate list is full
            finished[sequence] = newly_finished[sequence]
        tokens = np.array(kept, dtype=np.int64)  # (beam_size, n + 1)
        sum_logprobs = np.array([scores[sequence] for sequence in kept])
        if len(finished) >= max_candidates or tokens.shape[1] > model.dims.n_text_ctx:
            break
        state.reorder(np.array([sources[sequence] for sequence in kept]))

    if len(finished) < beam_size:  # not enough ended: the best unfinished ones stand in
        for beam in np.argsort(sum_logprobs)[::-1].tolist():
            finished[tuple(tokens[beam].tolist()) + (eot,)] = float(sum_logprobs[beam])
            if len(finished) >= beam_size:
                break
    candidates = [list(sequence[sample_begin:-1]) for sequence in finished]
    return candidates, list(finished.values())


def decode(
    model: WhisperModel,
    audio_features: np.ndarray,
    options: DecodingOptions = DecodingOptions(),
    language_probs: dict[str, float] | None = None,
) -> DecodingResult:
    """Decode one window: ``audio_features`` (1, n_audio_ctx, n_audio_state) -> tokens and text.

    With ``temperature == 0`` a beam search of ``beam_size`` beams (one greedy pass for beam_size 1);
    with ``temperature > 0`` ``best_of`` samples decoded as one batch. The best ranked candidate
    (sum logprob / length penalty) is returned.
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

    beam_search = options.temperature == 0 and options.beam_size > 1
    if beam_search:
        n_group = options.beam_size
    else:
        n_group = options.best_of if options.temperature > 0 else 1
    logit_filter = LogitFilter(tokenizer, options, sample_begin)
    tokens = np.tile(np.array(prompt, dtype=np.int64), (n_group, 1))  # (n_group, n)
    state = model.new_decoder_state(audio_features)

    # first step: the prompt, the same for every candidate, runs once; the cache is then repeated
    # logits only where they are read: at <|startoftranscript|> (no-speech probability) and the last position
    logits = model.decode_step(state, tokens[:1], positions=[sot_index, -1])  # (1, 2, n_vocab)
    probs_at_sot = np.exp(log_softmax(logits[0, 0].astype(np.float64)))
    no_speech_prob = float(probs_at_sot[tokenizer.no_speech])
    logits = np.repeat(logits[:, -1], n_group, axis=0)  # (n_group, n_vocab)
    state.repeat(n_group)
    search = _beam_search if beam_search else sample_candidates
    candidates, sum_logprobs = search(model, state, logits, tokens, logit_filter, options, sample_len)

    best = _rank(candidates, sum_logprobs, options.length_penalty)
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
