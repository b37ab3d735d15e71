"""Audio decoding to 16 kHz mono float32, its errors, and the log-mel against faster-whisper's."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from conftest import AUDIO_DIR
from xdna_ep.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    WindowedLogMel,
    declared_duration,
    load_audio,
    log_mel_spectrogram,
    measure_audio,
    mel_filters,
    pad_or_trim,
)
from xdna_ep.errors import AudioError, AudioTooLong


def _sine(frequency: float, seconds: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def _peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_constants_are_whisper_s():
    assert (SAMPLE_RATE, N_SAMPLES, N_FRAMES) == (16000, 480000, 3000)


def test_wav_16k_mono_decodes_to_the_pcm_values():
    samples = load_audio(AUDIO_DIR / "jfk.wav")
    raw, rate = soundfile.read(AUDIO_DIR / "jfk.wav", dtype="int16")
    assert rate == SAMPLE_RATE and samples.dtype == np.float32 and samples.shape == (176000,)
    np.testing.assert_allclose(samples, raw / 32768.0, rtol=0, atol=1e-7)


def test_flac_44k_stereo_24bit_resamples_to_the_same_recording():
    from_flac = load_audio(AUDIO_DIR / "jfk.flac")  # 44.1 kHz, 2 channels, 24 bit
    from_wav = load_audio(AUDIO_DIR / "jfk.wav")  # the same recording at 16 kHz mono
    assert from_flac.shape == from_wav.shape
    correlation = np.corrcoef(from_flac, from_wav)[0, 1]
    assert correlation > 0.999, correlation
    np.testing.assert_allclose(from_flac, from_wav, rtol=0, atol=5e-3)


def test_resampling_keeps_duration_and_pitch(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, np.stack([_sine(440, 2.0, 44100), _sine(440, 2.0, 44100)], axis=1), 44100, subtype="PCM_24")
    samples = load_audio(path)
    assert samples.shape == (2 * SAMPLE_RATE,)
    assert _peak_hz(samples) == pytest.approx(440, abs=1.0)


@pytest.mark.parametrize(("fmt", "subtype", "suffix"), [("OGG", "VORBIS", ".ogg"), ("MP3", "MPEG_LAYER_III", ".mp3")])
def test_compressed_formats_decode(tmp_path, fmt, subtype, suffix):
    path = tmp_path / f"tone{suffix}"
    soundfile.write(path, _sine(440, 1.0, 22050), 22050, format=fmt, subtype=subtype)
    samples = load_audio(path)
    assert abs(samples.size - SAMPLE_RATE) <= 0.06 * SAMPLE_RATE  # codec priming/padding
    assert _peak_hz(samples) == pytest.approx(440, abs=2.0)


def test_formats_libsndfile_lacks_decode_through_ffmpeg(tmp_path):
    import av

    path = tmp_path / "tone.m4a"
    tone = _sine(440, 1.0, 22050)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=22050, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
        frame.sample_rate = 22050
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    samples = load_audio(path)
    assert abs(samples.size - SAMPLE_RATE) <= 0.1 * SAMPLE_RATE
    assert _peak_hz(samples) == pytest.approx(440, abs=2.0)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)


def test_not_audio(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(path)


def test_truncated_wav(tmp_path):
    path = tmp_path / "cut.wav"
    path.write_bytes((AUDIO_DIR / "jfk.wav").read_bytes()[:100_000])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path)


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    path.write_bytes((AUDIO_DIR / "jfk.flac").read_bytes()[:200_000])
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(path)


def test_zero_length_wav(tmp_path):
    path = tmp_path / "zero.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="zero length"):
        load_audio(path)


def test_non_finite_samples_are_an_error(tmp_path):
    path = tmp_path / "nan.wav"
    samples = _sine(440, 0.5, SAMPLE_RATE)
    samples[100] = np.nan
    soundfile.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 of 8000 samples are NaN or infinite"):
        load_audio(path)
    samples[100] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(samples)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 100), dtype=np.float32), "1-D"),
        (np.zeros(100, dtype=np.int16), "float"),
        (np.zeros(0, dtype=np.float32), "zero length"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(AudioError, match=message):
        load_audio(array)


def test_mel_filters_match_faster_whisper():
    from faster_whisper.feature_extractor import FeatureExtractor

    for n_mels in (80, 128):
        reference = FeatureExtractor.get_mel_filters(SAMPLE_RATE, 400, n_mels=n_mels).astype(np.float32)
        np.testing.assert_allclose(mel_filters(n_mels), reference, rtol=0, atol=1e-7)


@pytest.mark.parametrize("clip", ["jfk.wav", "jfk.flac", "2412-153948-0000.flac", "espeak_fox.wav"])
def test_log_mel_matches_faster_whisper(clip):
    from faster_whisper.feature_extractor import FeatureExtractor

    samples = load_audio(AUDIO_DIR / clip)
    # faster-whisper's transcribe() appends HOP_LENGTH zeros before the STFT, as transcribe() here does
    ours = log_mel_spectrogram(samples, padding=HOP_LENGTH)
    theirs = FeatureExtractor()(samples)
    assert ours.shape == theirs.shape == (80, samples.size // HOP_LENGTH + 1)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_log_mel_is_normalised_and_windows_pad_with_zeros():
    samples = load_audio(AUDIO_DIR / "jfk.wav")
    mel = log_mel_spectrogram(samples)
    assert mel.shape == (80, samples.size // HOP_LENGTH)
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # clamped to max - 8, divided by 4
    window = pad_or_trim(mel, N_FRAMES)
    assert window.shape == (80, N_FRAMES)
    assert np.all(window[:, mel.shape[1]:] == 0.0)
    assert pad_or_trim(np.ones((80, 3500)), N_FRAMES).shape == (80, N_FRAMES)


def test_log_mel_of_very_short_input_is_empty_not_an_error():
    assert log_mel_spectrogram(np.zeros(100, dtype=np.float32)).shape == (80, 0)


@pytest.fixture(scope="module")
def long_stereo_flac(tmp_path_factory):
    """jfk.flac (44.1 kHz stereo) repeated to 70 s: three log-mel blocks, resampled a block at a time."""
    samples, rate = soundfile.read(AUDIO_DIR / "jfk.flac", dtype="float32")
    path = tmp_path_factory.mktemp("long") / "long.flac"
    soundfile.write(path, np.resize(samples, (70 * rate, samples.shape[1])), rate, subtype="PCM_24")
    return path


@pytest.mark.parametrize("kept_blocks", [20, 0])  # the 70-s recording kept from the first pass, or decoded again
def test_windowed_log_mel_is_the_whole_log_mel_bit_for_bit(long_stereo_flac, kept_blocks, monkeypatch):
    import xdna_ep.audio

    monkeypatch.setattr(xdna_ep.audio, "KEPT_BLOCKS", kept_blocks)
    whole = log_mel_spectrogram(long_stereo_flac, padding=HOP_LENGTH)
    windowed = WindowedLogMel(long_stereo_flac, padding=HOP_LENGTH)
    assert (windowed._kept is not None) == (kept_blocks > 0)
    assert windowed.n_frames == whole.shape[1] == 70 * 100 + 1
    # seek's windows: forward, across block edges, the last one short; then a window behind (decoded again)
    for start, stop in [(0, 3000), (1234, 4234), (2999, 5999), (6000, 9000), (6500, 7001), (10, 20)]:
        np.testing.assert_array_equal(windowed.frames(start, stop), whole[:, start:stop])


@pytest.mark.parametrize("n_samples", [100, 1000, N_SAMPLES - 1, N_SAMPLES + 40, 2 * N_SAMPLES + 7])
def test_windowed_log_mel_of_arrays_around_block_edges(n_samples):
    samples = np.random.default_rng(n_samples).normal(0, 0.1, n_samples).astype(np.float32)
    whole = log_mel_spectrogram(samples)
    windowed = WindowedLogMel(samples)
    assert windowed.n_frames == whole.shape[1]
    np.testing.assert_array_equal(windowed.frames(0, whole.shape[1]), whole)


def test_declared_duration_refuses_before_decoding(six_hours_of_silence):
    import tracemalloc

    assert declared_duration(six_hours_of_silence) == 6 * 3600.0
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match="21600.0 s; at most 1800 s"):
            load_audio(six_hours_of_silence, max_seconds=1800)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * 2**20  # nothing decoded: the header alone (1 MiB leaves room for libsndfile's Python side)


def test_undeclared_duration_is_capped_while_decoding(six_hours_of_silence, monkeypatch):
    import tracemalloc

    import xdna_ep.audio

    monkeypatch.setattr(xdna_ep.audio, "declared_duration", lambda path: None)  # as a stream with no length
    tracemalloc.start()
    try:
        with pytest.raises(AudioTooLong, match="audio too long: more than 1800 s; at most 1800 s"):
            measure_audio(six_hours_of_silence, max_seconds=1800)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # refused once 1800 s were decoded, holding one block at a time (1800 s at 16 kHz would be 110 MiB)
    assert peak < 8 * 2**20  # measured 2.7 MiB


def test_measure_audio_counts_what_load_audio_decodes():
    assert measure_audio(AUDIO_DIR / "jfk.flac") == load_audio(AUDIO_DIR / "jfk.flac").size / SAMPLE_RATE == 11.0
    with pytest.raises(AudioTooLong, match="11.0 s; at most 10 s"):
        measure_audio(AUDIO_DIR / "jfk.flac", max_seconds=10)


def test_windowed_log_mel_memory_does_not_grow_with_the_duration(tmp_path):
    import tracemalloc

    def peak_mib(minutes: int) -> float:
        path = tmp_path / f"{minutes}.wav"
        tone = _sine(440, 60, SAMPLE_RATE)
        with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as sound_file:
            for _ in range(minutes):
                sound_file.write(tone)
        tracemalloc.start()
        try:
            mel = WindowedLogMel(path, padding=HOP_LENGTH)
            for seek in range(0, mel.n_frames, N_FRAMES):  # every window, as transcribe's seek reaches it
                mel.frames(seek, seek + N_FRAMES)
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    # up to KEPT_BLOCKS blocks (10 min) the first pass's log-mel is kept (0.9 MiB a block); beyond, only
    # the blocks a window spans: the same peak whatever the duration (the whole 22-min recording would
    # add 81 MiB of samples and 40 MiB of log-mel). 2 MiB of slack over the 11-minute peak
    one, six, eleven, twenty_two = peak_mib(1), peak_mib(6), peak_mib(11), peak_mib(22)
    assert twenty_two < eleven + 2, (eleven, twenty_two)
    assert six < one + 12 * 0.92 + 2, (one, six)  # 12 blocks kept
    # measured 51 MiB: one block's STFT (3000 frames x 400 samples, NumPy's complex128 FFT, 35 MiB before
    # blocks were kept) and the first pass's 20 kept blocks, held until the 21st shows the recording is long
    assert twenty_two < 56, twenty_two
