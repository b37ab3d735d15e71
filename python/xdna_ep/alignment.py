"""Word timestamps: where each word is spoken, from the cross-attention of the alignment heads.

openai-whisper's ``timing.py`` method. The decoder runs once over the window's whole text
(``sot_sequence, <|notimestamps|>, text..., <|endoftext|>``, on the CPU); the cross-attention
weights of a few heads known to follow the audio (the *alignment heads*) are cut to the frames the
window holds, renormalised, standardised over the tokens, median-filtered over time and averaged
over the heads; dynamic time warping then finds the monotonic token -> audio-position path of least
cost, and a word starts where the path first reaches its first token. Punctuation is merged into
the neighbouring word, and words much longer than the median at a sentence or segment boundary are
shortened, as openai-whisper and faster-whisper do.

The exported ``decoder_model.onnx`` returns only logits and the KV cache; the attention weights are
taken from an in-memory copy of it in which the cross-attention Softmax outputs (found by their
structure: scores of a query against keys computed from ``encoder_hidden_states`` alone) are graph
outputs.
"""

from __future__ import annotations

import string
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xdna_ep.audio import TOKENS_PER_SECOND
from xdna_ep.errors import ModelError

if TYPE_CHECKING:
    import onnx

    from xdna_ep.model import WhisperModel
    from xdna_ep.tokenizer import Tokenizer

# openai-whisper's defaults (transcribe.py)
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
MEDFILT_WIDTH = 7  # frames of the median filter over time
SENTENCE_END_MARKS = ".。!！?？"
# languages written without spaces: words are split where the tokens decode to whole characters
_UNSPACED_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}

# ops whose output depends on their input's shape only, not on its values
_SHAPE_ONLY_OPS = {"Shape", "Size"}
# (layer, head) of the cross-attention heads that follow the audio, per model; from openai-whisper's
# _ALIGNMENT_HEADS (whisper/__init__.py, base85 of a gzip'd (n_text_layer, n_text_head) bool mask),
# decoded; CTranslate2's converted models list the same heads in config.json "alignment_heads"
ALIGNMENT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny.en": ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)),
    "base": ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)),
}


@dataclass
class WordTiming:
    """One word of a window: its text (with its leading space), tokens, times in seconds from the
    start of the window, and the mean probability of its tokens."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def alignment_heads(model: WhisperModel) -> tuple[tuple[int, int], ...]:
    """The model's alignment heads: ``whisper_config.json`` ``alignment_heads`` if given, else the table."""
    from xdna_ep.models import registry

    configured = registry.read_config(model.folder).get("alignment_heads")
    if configured:
        heads = tuple((int(layer), int(head)) for layer, head in configured)
    else:
        heads = ALIGNMENT_HEADS.get(model.name, ())
    if not heads:
        raise ModelError(
            f"no alignment heads known for model {model.name!r} (known: {', '.join(ALIGNMENT_HEADS)}): "
            "word timestamps need them in whisper_config.json as 'alignment_heads': [[layer, head], ...]"
        )
    for layer, head in heads:
        if not (0 <= layer < model.dims.n_text_layer and 0 <= head < model.dims.n_text_head):
            raise ModelError(f"alignment head ({layer}, {head}) is outside model {model.name!r}'s decoder")
    return heads


def cross_attention_softmax_outputs(graph: onnx.GraphProto, n_text_layer: int) -> list[str]:
    """Names of the cross-attention Softmax outputs of a Whisper decoder graph, first layer first.

    A cross-attention Softmax normalises ``MatMul(query, key)`` (through an optional mask ``Add``)
    whose key values are computed from ``encoder_hidden_states`` and not from ``input_ids``; a
    self-attention key's are computed from ``input_ids``. Only values count: what a ``Shape`` reads
    (the batch size a Reshape takes from the query side) is not followed. ModelError naming what
    was found when there are not ``n_text_layer``.
    """
    producer = {output: node for node in graph.node for output in node.output}
    graph_inputs = {value.name for value in graph.input}
    reaches: dict[str, frozenset[str]] = {}

    def inputs_reached(name: str) -> frozenset[str]:
        """The graph inputs whose values ``name`` is computed from (iterative: decoder graphs are deep)."""
        stack = [name]
        while stack:
            current = stack[-1]
            if current in reaches:
                stack.pop()
                continue
            node = producer.get(current)
            if node is None or node.op_type in _SHAPE_ONLY_OPS:
                reaches[current] = frozenset({current}) & graph_inputs if node is None else frozenset()
                stack.pop()
                continue
            pending = [source for source in node.input if source and source not in reaches]
            if pending:
                stack.extend(pending)
                continue
            reaches[current] = frozenset().union(*(reaches[source] for source in node.input if source))
            stack.pop()
        return reaches[name]

    found = []
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        scores = producer.get(node.input[0])
        if scores is not None and scores.op_type == "Add":  # attention mask
            scores = producer.get(scores.input[0])
        if scores is None or scores.op_type != "MatMul":
            continue
        if inputs_reached(scores.input[1]) == {"encoder_hidden_states"}:
            found.append(node.output[0])
    if len(found) != n_text_layer:
        raise ModelError(
            f"word timestamps need one cross-attention Softmax per decoder layer ({n_text_layer}); "
            f"the decoder graph has {len(found)} (a fused attention op hides the weights)"
        )
    return found


class Aligner:
    """The alignment session of one model: ``decoder_model`` with its cross-attention weights as outputs."""

    def __init__(self, model: WhisperModel) -> None:
        import onnx
        import onnxruntime

        from xdna_ep.models import registry

        self.heads = alignment_heads(model)
        path = model.folder / registry.DECODER_FILE
        from google.protobuf.message import DecodeError

        try:
            graph_model = onnx.load(str(path))
        except (OSError, ValueError, DecodeError) as error:
            raise ModelError(f"cannot load {path} for word timestamps: {error}") from None
        softmax_outputs = cross_attention_softmax_outputs(graph_model.graph, model.dims.n_text_layer)
        layers = sorted({layer for layer, _ in self.heads})
        self.output_names = ["logits"] + [softmax_outputs[layer] for layer in layers]
        self.layer_index = {layer: index for index, layer in enumerate(layers)}
        for layer in layers:
            output = onnx.helper.make_tensor_value_info(softmax_outputs[layer], onnx.TensorProto.FLOAT, None)
            graph_model.graph.output.append(output)
        session_options = onnxruntime.SessionOptions()
        session_options.log_severity_level = 3  # errors only: an optional input with a default warns at load
        self.session = onnxruntime.InferenceSession(
            graph_model.SerializeToString(), session_options, providers=["CPUExecutionProvider"]
        )

    def attention(self, audio_features: np.ndarray, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Logits (n_tokens, n_vocab) and the alignment heads' cross-attention weights
        (n_heads, n_tokens, n_audio_ctx) of ``tokens`` attending to ``audio_features`` (1, n_audio_ctx, d)."""
        feeds = {"input_ids": np.array([tokens], dtype=np.int64), "encoder_hidden_states": audio_features}
        logits, *weights = self.session.run(self.output_names, feeds)
        # each weights entry: (1, n_text_head, n_tokens, n_audio_ctx)
        heads = np.stack([weights[self.layer_index[layer]][0, head] for layer, head in self.heads])
        return logits[0], heads


_aligners: weakref.WeakKeyDictionary[Any, Aligner] = weakref.WeakKeyDictionary()


def aligner(model: WhisperModel) -> Aligner:
    """The model's alignment session, built on first use and kept as long as the model lives."""
    if model not in _aligners:
        _aligners[model] = Aligner(model)
    return _aligners[model]


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a window of ``width`` (odd) along the last axis, reflect-padded (openai-whisper's)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Monotonic path of least total ``cost`` (N, M) from (0, 0) to (N - 1, M - 1): (rows, columns).

    openai-whisper's ``dtw_cpu`` with its tie-breaking (diagonal, then down, then right), computed
    one anti-diagonal at a time.
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for diagonal in range(2, n + m + 1):  # cells (i, j), i + j = diagonal, 1-based
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = n, m
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    rows, columns = np.array(path[::-1]).T
    return rows, columns


def split_to_word_tokens(tokenizer: Tokenizer, tokens: list[int], language: str) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: split at whole characters, then (spaced languages) joined up to each
    space or punctuation mark (openai-whisper's ``split_to_word_tokens``)."""
    decoded_full = tokenizer.decode_with_timestamps(tokens)
    replacement = "\ufffd"
    subwords: list[str] = []
    subword_tokens: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for token in tokens:
        current.append(token)
        decoded = tokenizer.decode_with_timestamps(current)
        if replacement not in decoded or decoded_full[offset + decoded.index(replacement)] == replacement:
            subwords.append(decoded)
            subword_tokens.append(current)
            current = []
            offset += len(decoded)
    if language in _UNSPACED_LANGUAGES:
        return subwords, subword_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for subword, pieces in zip(subwords, subword_tokens):
        special = pieces[0] >= tokenizer.eot
        if special or subword.startswith(" ") or subword.strip() in string.punctuation or not words:
            words.append(subword)
            word_tokens.append(list(pieces))
        else:
            words[-1] += subword
            word_tokens[-1].extend(pieces)
    return words, word_tokens


def find_alignment(
    model: WhisperModel,
    audio_features: np.ndarray,
    sot_sequence: list[int],
    text_tokens: list[int],
    num_frames: int,
    language: str,
) -> list[WordTiming]:
    """Words of ``text_tokens`` with times in seconds from the window start (openai-whisper's
    ``find_alignment``). ``num_frames``: mel frames of audio the window holds (<= 3000)."""
    if not text_tokens:
        return []
    tokenizer = model.tokenizer
    tokens = [*sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits, weights = aligner(model).attention(audio_features, tokens)
    sampled_logits = logits[len(sot_sequence):, : tokenizer.eot].astype(np.float64)
    token_probs = np.exp(sampled_logits - sampled_logits.max(axis=-1, keepdims=True))
    token_probs /= token_probs.sum(axis=-1, keepdims=True)
    text_token_probs = token_probs[np.arange(len(text_tokens)), text_tokens]

    # softmax over the window's frames only = the full softmax cut there and renormalised
    weights = weights[:, :, : num_frames // 2].astype(np.float64)  # (n_heads, n_tokens, frames)
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), np.finfo(np.float64).tiny)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = np.where(std > 0, (weights - mean) / np.where(std > 0, std, 1.0), 0.0)
    weights = median_filter(weights, MEDFILT_WIDTH)
    matrix = weights.mean(axis=0)[len(sot_sequence): -1]  # rows: <|notimestamps|> and the text tokens
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = split_to_word_tokens(tokenizer, text_tokens + [tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    probabilities = [
        float(np.mean(text_token_probs[i:j])) for i, j in zip(word_boundaries[:-1], word_boundaries[1:])
    ]
    return [
        WordTiming(word, pieces, float(start), float(end), probability)
        for word, pieces, start, end, probability in zip(words, word_tokens, start_times, end_times, probabilities)
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Join opening punctuation to the next word and closing punctuation to the previous one, in place."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    model: WhisperModel,
    audio_features: np.ndarray,
    sot_sequence: list[int],
    segments: list[dict[str, Any]],
    time_offset: float,
    num_frames: int,
    language: str,
    last_speech_timestamp: float,
) -> None:
    """Give each of one window's ``segments`` (dicts with ``start``, ``end``, ``tokens``, times in
    seconds of the recording) its ``words`` [{word, start, end, probability}], and move the
    segment's start and end to its first and last word (openai-whisper's ``add_word_timestamps``)."""
    if not segments:
        return
    eot = model.tokenizer.eot
    text_tokens_per_segment = [[token for token in segment["tokens"] if token < eot] for segment in segments]
    text_tokens = [token for tokens in text_tokens_per_segment for token in tokens]
    alignment = find_alignment(model, audio_features, sot_sequence, text_tokens, num_frames, language)
    word_durations = np.array([timing.end - timing.start for timing in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = min(0.7, float(np.median(word_durations))) if len(word_durations) > 0 else 0.0
    max_duration = median_duration * 2

    # words at sentence boundaries are not longer than twice the median word duration
    if len(word_durations) > 0:
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration
    merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)

    word_index = 0
    for segment, segment_text_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words: list[dict[str, Any]] = []
        while word_index < len(alignment) and saved_tokens < len(segment_text_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append({
                    "word": timing.word,
                    "start": round(time_offset + timing.start, 2),
                    "end": round(time_offset + timing.end, 2),
                    "probability": timing.probability,
                })
            saved_tokens += len(timing.tokens)
            word_index += 1
        if words:
            # the first (and second) word after a pause are not longer than twice the median duration
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                words[0]["end"] - words[0]["start"] > max_duration
                or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)
            ):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)
            # the segment's timestamps win over a first or last word that runs far past them
            if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
            else:
                segment["start"] = words[0]["start"]
            if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
            else:
                segment["end"] = words[-1]["end"]
            last_speech_timestamp = segment["end"]
        segment["words"] = words
