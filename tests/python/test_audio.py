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
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
)
from xdna_ep.errors import AudioError


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
