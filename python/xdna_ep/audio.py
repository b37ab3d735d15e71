"""Audio in, log-mel out: decode any audio file to 16 kHz mono float32 and compute Whisper's log-mel.

The log-mel is the one openai-whisper's and faster-whisper's ``transcribe()`` feed the encoder:
periodic Hann window, reflect padding, Slaney mel filters, ``log10(max(x, 1e-10))``, clamp to
``max - 8``, ``(x + 4) / 4``, computed over the whole recording and then cut into 30-s windows that
are zero-padded (after normalisation) to ``N_FRAMES``.

Non-finite samples (NaN, +-Inf) are an error, not silently replaced: a file or array carrying them
is broken, and any replacement would transcribe something that is not in the recording.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from xdna_ep.errors import AudioError, AudioTooLong

# hard-coded audio hyperparameters of Whisper
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30  # seconds of audio the encoder sees at once
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30-s window
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's stride-2 convolution halves the frames
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second (10 ms each)
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50 audio positions per second (20 ms each)

LOG_MEL_FLOOR = 1e-10  # power floor before log10
LOG_MEL_DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum

# frames per STFT block: bounds the complex intermediate to a few MB whatever the duration
_STFT_BLOCK_FRAMES = N_FRAMES
# WindowedLogMel keeps the first pass's blocks of a recording of at most this many blocks (10 minutes:
# 20 x 80 x 3000 float32, 19 MB; 31 MB with 128 mels) instead of decoding it a second time
KEPT_BLOCKS = 20
# libsndfile decodes DECODE_BLOCK_SECONDS at a time, fewer when that would be over DECODE_BLOCK_BYTES of
# the file's own samples (float32, all channels): a block holds at most 4 MiB, and 10 s once resampled
DECODE_BLOCK_SECONDS = 10
DECODE_BLOCK_BYTES = 4 * 2**20

AudioInput = Union[str, os.PathLike, np.ndarray]


def load_audio(source: AudioInput, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode an audio file (or check an array) into mono float32 samples at ``sample_rate``.

    ``source`` is a path to any file libsndfile (wav, flac, ogg, mp3, ...) or FFmpeg (through PyAV:
    m4a, opus, webm, ...) decodes, with any sample rate and channel count; or a 1-D float array that
    already holds mono samples at ``sample_rate``. Returns shape (n_samples,) float32.
    ``max_seconds``: refuse (AudioTooLong) a recording longer than this, before it is decoded when the
    container declares its duration, else as soon as the decoded samples pass it.
    Raises AudioError naming the file and the problem.
    """
    if isinstance(source, np.ndarray):
        samples = check_samples(source, "audio array")
        _check_length(samples.size / sample_rate, max_seconds, "audio array")
        return samples
    blocks = list(stream_audio(source, sample_rate, max_seconds))
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def check_samples(samples: np.ndarray, name: str) -> np.ndarray:
    """Return ``samples`` as 1-D float32 after checking it is non-empty and finite."""
    if samples.ndim != 1:
        raise AudioError(f"{name}: expected 1-D mono samples, got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"{name}: expected float samples in [-1, 1], got dtype {samples.dtype}")
    if samples.size == 0:
        raise AudioError(f"{name}: contains no audio samples (zero length)")
    samples = samples.astype(np.float32, copy=False)
    n_bad = _count_non_finite(samples)
    if n_bad:
        raise AudioError(f"{name}: {n_bad} of {samples.size} samples are NaN or infinite")
    return samples


def _count_non_finite(samples: np.ndarray) -> int:
    finite = np.isfinite(samples)
    return 0 if finite.all() else int(samples.size - np.count_nonzero(finite))


def _check_length(seconds: float, max_seconds: float | None, name: str, *, complete: bool = True) -> None:
    """AudioTooLong past ``max_seconds``; ``complete``: ``seconds`` is the whole duration, not a running count."""
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLong(seconds if complete else None, max_seconds, name)


def declared_duration(path: str | os.PathLike) -> float | None:
    """Seconds of audio the file's container declares in its header, read without decoding a sample.

    None when the container does not declare it (a stream written with the length unknown, a raw
    codec stream) or neither decoder can open the file. A declaration can lie; ``stream_audio``
    counts what it decodes as well.
    """
    import soundfile

    try:
        info = soundfile.info(str(path))
        if 0 < info.frames < _SNDFILE_UNKNOWN_FRAMES and info.samplerate > 0:
            return info.frames / info.samplerate
        return None
    except soundfile.LibsndfileError:
        pass
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
                return float(stream.duration * stream.time_base)
            if container.duration is not None and container.duration > 0:
                return container.duration / av.time_base
    except av.error.FFmpegError:
        pass
    return None


def stream_audio(
    source: AudioInput, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Decode ``source`` a block at a time into mono float32 blocks at ``sample_rate``.

    Holds one decoded block (at most DECODE_BLOCK_SECONDS, at most DECODE_BLOCK_BYTES of the file's
    own samples; FFmpeg's frames are smaller) and its resampled copy at a time, whatever the duration: mixing to mono and resampling (soxr's stream, which gives
    the same samples as resampling the whole recording at once) happen per block. A recording longer
    than ``max_seconds`` raises AudioTooLong before its first sample is decoded when the container
    declares its duration, else as soon as the decoded samples pass the limit. Non-finite samples
    raise AudioError after the last block, naming how many there were. An array is checked and
    yielded in blocks of N_SAMPLES (views, no copy).
    """
    if isinstance(source, np.ndarray):
        samples = check_samples(source, "audio array")
        _check_length(samples.size / sample_rate, max_seconds, "audio array")
        for start in range(0, samples.size, N_SAMPLES):
            yield samples[start:start + N_SAMPLES]
        return
    path = Path(source)
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    if max_seconds is not None:
        declared = declared_duration(path)
        if declared is not None:
            _check_length(declared, max_seconds, str(path))

    n_samples = n_bad = 0
    resampler = None
    for file_block, file_rate in _decode_blocks(path):
        mono = file_block.mean(axis=1, dtype=np.float32) if file_block.shape[1] > 1 else file_block[:, 0]
        if file_rate != sample_rate:
            if resampler is None:
                import soxr

                resampler = soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32")
            mono = resampler.resample_chunk(mono)
        if mono.size == 0:
            continue
        n_samples += mono.size
        n_bad += _count_non_finite(mono)
        _check_length(n_samples / sample_rate, max_seconds, str(path), complete=False)
        yield np.ascontiguousarray(mono, dtype=np.float32)
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if tail.size:
            n_samples += tail.size
            n_bad += _count_non_finite(tail)
            _check_length(n_samples / sample_rate, max_seconds, str(path), complete=False)
            yield np.ascontiguousarray(tail, dtype=np.float32)
    if n_samples == 0:
        raise AudioError(f"{path}: contains no audio samples (zero length)")
    if n_bad:
        raise AudioError(f"{path}: {n_bad} of {n_samples} samples are NaN or infinite")


def measure_audio(source: AudioInput, max_seconds: float | None = None) -> float:
    """Seconds of 16-kHz audio ``source`` decodes to, checked as ``load_audio`` checks it, holding one block.

    Raises AudioTooLong past ``max_seconds`` and AudioError for anything ``load_audio`` refuses.
    """
    n_samples = sum(block.size for block in stream_audio(source, SAMPLE_RATE, max_seconds))
    return n_samples / SAMPLE_RATE


class _NotDecodable(Exception):
    """One decoder could not read the file (the other may)."""


# libsndfile logs "data : <declared> (should be <present>)" for a WAV whose data chunk is cut short
_WAV_DATA_SIZE = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
# sizes streaming writers put in the header when the length is not known yet
_WAV_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFF - 1}
# libsndfile reports SF_COUNT_MAX frames for a file whose length it does not know
_SNDFILE_UNKNOWN_FRAMES = 2**62


def _decode_blocks(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """(samples (n, channels) float32, the file's rate) blocks: libsndfile first, FFmpeg when it cannot open the file.

    A decoder that fails after its first block has been given out cannot hand over to the other:
    that is an AudioError naming the failure.
    """
    try:
        yield from _decode_with_soundfile(path)
        return
    except _NotDecodable as soundfile_error:
        first_error = soundfile_error
    try:
        yield from _decode_with_pyav(path)
    except _NotDecodable as pyav_error:
        raise AudioError(f"cannot decode {path} as audio ({first_error}; {pyav_error})") from None


def _decode_with_soundfile(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """Decode with libsndfile, DECODE_BLOCK_BYTES at a time. Yields (samples (n, channels) float32, rate)."""
    import soundfile

    given_out = False
    try:
        with soundfile.SoundFile(str(path)) as sound_file:
            declared = _WAV_DATA_SIZE.search(sound_file.extra_info)
            if declared and int(declared.group(1)) not in _WAV_UNKNOWN_SIZES:
                size, present = int(declared.group(1)), int(declared.group(2))
                if size > present:
                    raise AudioError(
                        f"audio file is truncated: {path} declares {size} bytes of samples "
                        f"but holds {present}"
                    )
            block_frames = min(DECODE_BLOCK_SECONDS * sound_file.samplerate, DECODE_BLOCK_BYTES // (4 * sound_file.channels))
            block_frames = max(1, block_frames)
            while True:
                block = sound_file.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                given_out = True
                yield block, sound_file.samplerate
    except soundfile.LibsndfileError as error:
        if given_out:
            raise AudioError(f"cannot decode {path} as audio (libsndfile: {error.error_string})") from None
        raise _NotDecodable(f"libsndfile: {error.error_string}") from None


def _decode_with_pyav(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """Decode the first audio stream with FFmpeg (PyAV), a frame at a time. Yields (samples (n, channels), rate)."""
    import av

    given_out = False
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise _NotDecodable("FFmpeg: no audio stream")
            stream = container.streams.audio[0]
            # planar float at the stream's own rate and layout; mixing and resampling happen in stream_audio
            resampler = av.AudioResampler(format="fltp")
            rate = stream.codec_context.sample_rate
            for frame in container.decode(stream):
                for planar in resampler.resample(frame):
                    given_out = True
                    yield planar.to_ndarray().T, rate  # (n, channels)
            for planar in resampler.resample(None):
                yield planar.to_ndarray().T, rate
    except av.error.FFmpegError as error:
        if given_out:
            raise AudioError(f"cannot decode {path} as audio (FFmpeg: {error.strerror})") from None
        raise _NotDecodable(f"FFmpeg: {error.strerror}") from None


def pad_or_trim(array: np.ndarray, length: int = N_FRAMES, *, axis: int = -1) -> np.ndarray:
    """Zero-pad or trim ``array`` along ``axis`` to ``length`` (the encoder expects N_FRAMES frames)."""
    if array.shape[axis] > length:
        array = array.take(indices=range(length), axis=axis)
    if array.shape[axis] < length:
        pad_widths = [(0, 0)] * array.ndim
        pad_widths[axis] = (0, length - array.shape[axis])
        array = np.pad(array, pad_widths)
    return array


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style mel filterbank (librosa's ``mel(htk=False, norm="slaney")``).

    Returns shape (n_mels, n_fft // 2 + 1) float32: triangles on the Slaney mel scale (linear below
    1 kHz, logarithmic above), each scaled to unit area so every band carries about equal energy.
    """
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)  # (n_fft // 2 + 1,)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)  # (n_mels + 2,) band edges and centres

    band_widths = np.diff(hz_points)  # (n_mels + 1,)
    ramps = hz_points[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_bins)
    rising = -ramps[:-2] / band_widths[:-1, None]
    falling = ramps[2:] / band_widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_bins)
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]  # Slaney area normalisation
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


# the Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above
_MEL_LINEAR_HZ_PER_MEL = 200.0 / 3
_MEL_LOG_START_HZ = 1000.0
_MEL_LOG_START = _MEL_LOG_START_HZ / _MEL_LINEAR_HZ_PER_MEL
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _MEL_LINEAR_HZ_PER_MEL
    logarithmic = _MEL_LOG_START + np.log(np.maximum(hz, 1e-10) / _MEL_LOG_START_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_LOG_START_HZ, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    linear = mel * _MEL_LINEAR_HZ_PER_MEL
    logarithmic = _MEL_LOG_START_HZ * np.exp(_MEL_LOG_STEP * (mel - _MEL_LOG_START))
    return np.where(mel >= _MEL_LOG_START, logarithmic, linear)


@functools.lru_cache(maxsize=None)
def _hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window(n_fft), i.e. np.hanning(n_fft + 1)[:-1])."""
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    window.flags.writeable = False
    return window


def log_mel_spectrogram(audio: AudioInput, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel spectrogram of a whole recording.

    ``audio``: a path or (n_samples,) float32 mono samples at 16 kHz. ``padding`` zeros are appended
    before the STFT (``transcribe`` appends HOP_LENGTH so that every frame of the recording sees
    zeros, not a reflection, past the end, as openai-whisper and faster-whisper do).

    Returns (n_mels, (n_samples + padding) // HOP_LENGTH) float32, normalised over the whole input.
    ``WindowedLogMel`` gives the same frames, computed a block at a time.
    """
    samples = load_audio(audio)
    if padding > 0:
        samples = np.pad(samples, (0, padding))
    padded = np.pad(samples, (N_FFT // 2, N_FFT // 2), mode="reflect")  # centred frames
    n_frames = (padded.size - N_FFT) // HOP_LENGTH  # the last STFT frame is dropped
    log_spec = np.empty((n_mels, n_frames), dtype=np.float32)
    if n_frames == 0:  # shorter than one hop: nothing to normalise
        return log_spec
    for start in range(0, n_frames, _STFT_BLOCK_FRAMES):
        stop = min(start + _STFT_BLOCK_FRAMES, n_frames)
        log_spec[:, start:stop] = _log10_mel(padded[start * HOP_LENGTH:(stop - 1) * HOP_LENGTH + N_FFT], n_mels)
    return _normalise(log_spec, log_spec.max())


def _log10_mel(padded: np.ndarray, n_mels: int) -> np.ndarray:
    """log10 mel power of every frame of ``padded`` (frames start every HOP_LENGTH samples, N_FFT long).

    Returns (n_mels, (padded.size - N_FFT) // HOP_LENGTH + 1) float32, not yet normalised.
    """
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH]  # (n, N_FFT)
    spectrum = np.fft.rfft(frames * _hann_window(N_FFT), axis=-1).astype(np.complex64)
    power = np.abs(spectrum) ** 2  # (frames, N_FFT // 2 + 1)
    mel = mel_filters(n_mels) @ power.T  # (n_mels, frames)
    return np.log10(np.maximum(mel, LOG_MEL_FLOOR))


def _normalise(log_spec: np.ndarray, maximum: float) -> np.ndarray:
    """Whisper's normalisation, in place: clamp to ``maximum`` - 8 (log10 units), then (x + 4) / 4."""
    np.maximum(log_spec, maximum - LOG_MEL_DYNAMIC_RANGE, out=log_spec)
    log_spec += 4.0
    log_spec /= 4.0
    return log_spec


class _Log10MelBlocks:
    """The un-normalised log10 mel of a recording, block by block of _STFT_BLOCK_FRAMES frames, from a
    stream of sample blocks; the same numbers, block for block, as ``log_mel_spectrogram`` computes.

    Holds the samples of about one block (480,240 samples, 1.9 MB) besides the decoder's block. The
    centred frames need N_FFT // 2 samples reflected at each end: the start's are the recording's
    first samples; the end's are known when the stream ends. ``n_samples`` is set then.
    """

    def __init__(self, sample_blocks: Iterator[np.ndarray], n_mels: int, padding: int) -> None:
        self.sample_blocks = sample_blocks
        self.n_mels = n_mels
        self.padding = padding
        self.n_samples: int | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (first frame, (n_mels, frames) float32) for each block in order."""
        half = N_FFT // 2
        block_samples = _STFT_BLOCK_FRAMES * HOP_LENGTH  # padded samples from one block's start to the next's
        block_span = (_STFT_BLOCK_FRAMES - 1) * HOP_LENGTH + N_FFT  # padded samples one full block reads
        pending: list[np.ndarray] = []
        held = np.zeros(0, np.float32)  # padded samples from padded index `held_from` on
        held_from = 0
        n_samples = 0
        block = 0
        started = False  # the reflected start is in `held`
        for samples in self.sample_blocks:
            n_samples += samples.size
            pending.append(samples)
            if not started:
                if n_samples < block_span - half:  # not one block yet: keep gathering
                    continue
                gathered = np.concatenate(pending)
                held = np.concatenate([gathered[1:half + 1][::-1], gathered])  # reflect padding at the start
                started = True
            else:
                held = np.concatenate([held, *pending])
            pending = []
            while held_from + held.size >= block * block_samples + block_span:
                offset = block * block_samples - held_from
                yield block * _STFT_BLOCK_FRAMES, _log10_mel(held[offset:offset + block_span], self.n_mels)
                block += 1
                drop = block * block_samples - held_from
                held, held_from = held[drop:], held_from + drop
        self.n_samples = n_samples
        n_frames = (n_samples + self.padding) // HOP_LENGTH
        if not started:  # shorter than one block: pad it as log_mel_spectrogram does
            samples = np.concatenate(pending) if pending else np.zeros(0, np.float32)
            held = np.pad(np.pad(samples, (0, self.padding)), (half, half), mode="reflect")
        else:
            extended = np.concatenate([held, *pending, np.zeros(self.padding, np.float32)])
            held = np.concatenate([extended, extended[-half - 1:-1][::-1]])  # reflect padding at the end
        while block * _STFT_BLOCK_FRAMES < n_frames:
            frames = min(_STFT_BLOCK_FRAMES, n_frames - block * _STFT_BLOCK_FRAMES)
            offset = block * block_samples - held_from
            yield block * _STFT_BLOCK_FRAMES, _log10_mel(held[offset:offset + (frames - 1) * HOP_LENGTH + N_FFT], self.n_mels)
            block += 1


class WindowedLogMel:
    """Whisper's log-mel of a whole recording, computed a block of N_FRAMES frames at a time.

    The same frames as ``log_mel_spectrogram(audio, n_mels, padding)``, bit for bit, without holding
    the recording or its log-mel: construction decodes the recording once (``stream_audio``) to find
    its length and the maximum the normalisation clamps to. A recording of at most ``KEPT_BLOCKS``
    blocks (10 minutes) keeps that pass's blocks and is not decoded again; for a longer one,
    ``frames(start, stop)`` decodes it again as far as ``stop`` and keeps the blocks from ``start`` on,
    so memory stays flat with the duration as long as the windows asked for move forward (as
    ``transcribe``'s seek does).
    """

    def __init__(self, audio: AudioInput, n_mels: int = 80, padding: int = 0, max_seconds: float | None = None) -> None:
        self.audio = audio
        self.n_mels = n_mels
        self.padding = padding
        maximum = -np.inf
        blocks = _Log10MelBlocks(stream_audio(audio, max_seconds=max_seconds), n_mels, padding)
        kept: dict[int, np.ndarray] | None = {}  # the first pass's blocks while the recording is short
        for first, log_spec in blocks:
            maximum = max(maximum, float(log_spec.max()))
            if kept is not None:
                kept[first] = log_spec
                if len(kept) > KEPT_BLOCKS:
                    kept = None
        assert blocks.n_samples is not None
        self.n_samples = blocks.n_samples  # 16-kHz samples in the recording
        self.n_frames = (self.n_samples + padding) // HOP_LENGTH  # log-mel frames, the padding included
        self.maximum = maximum
        self._blocks: Iterator[tuple[int, np.ndarray]] | None = None
        self._held: dict[int, np.ndarray] = {}  # first frame -> normalised block
        self._next_block = 0  # first frame of the next block the decoder will give
        # a short recording keeps every block of the first pass: frames() never decodes it again
        self._kept = {first: _normalise(log_spec, maximum) for first, log_spec in kept.items()} if kept else None

    def frames(self, start: int, stop: int) -> np.ndarray:
        """The normalised log-mel frames [start, stop) (clipped to n_frames): (n_mels, frames) float32."""
        stop = min(stop, self.n_frames)
        if stop <= start:
            return np.zeros((self.n_mels, 0), np.float32)
        if self._kept is not None:
            return _cut(self._kept, start, stop)
        first_block = start - start % _STFT_BLOCK_FRAMES
        if self._blocks is None or (self._held and min(self._held) > first_block) or (
            not self._held and self._next_block > first_block
        ):  # a first call, or a window behind the blocks kept: decode again from the start
            self._blocks = iter(_Log10MelBlocks(stream_audio(self.audio), self.n_mels, self.padding))
            self._held = {}
            self._next_block = 0
        self._held = {first: block for first, block in self._held.items() if first + block.shape[1] > start}
        while self._next_block < stop:
            first, log_spec = next(self._blocks)
            self._next_block = first + log_spec.shape[1]
            if self._next_block > start:
                self._held[first] = _normalise(log_spec, self.maximum)
        return _cut(self._held, start, stop)


def _cut(blocks: dict[int, np.ndarray], start: int, stop: int) -> np.ndarray:
    """Frames [start, stop) from ``blocks`` (first frame -> (n_mels, frames)), which cover them."""
    pieces = [
        block[:, max(0, start - first):stop - first]
        for first, block in sorted(blocks.items())
        if first < stop and first + block.shape[1] > start
    ]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
