"""bench-longform's recordings: what they hold, so its figures mean what the README says."""

from __future__ import annotations

import json

import pytest
from conftest import AUDIO_DIR

from xdna_ep.audio import SAMPLE_RATE, load_audio
from xdna_ep.bench_longform import GAP_SECONDS, GAPPED_CLIPS, LongformBenchOptions, gapped_recording, long_recording


def test_gapped_recording_has_the_clips_where_it_says():
    samples, spans = gapped_recording(AUDIO_DIR)
    clips = [load_audio(AUDIO_DIR / name) for name in GAPPED_CLIPS]
    assert [round(end - start, 3) for start, end in spans] == [round(c.size / SAMPLE_RATE, 3) for c in clips]
    assert spans[1][0] - spans[0][1] == pytest.approx(GAP_SECONDS) and spans[2][0] - spans[1][1] == pytest.approx(GAP_SECONDS)
    silence = samples[int(spans[0][1] * SAMPLE_RATE) + 1:int(spans[1][0] * SAMPLE_RATE) - 1]
    noise = samples[int(spans[1][1] * SAMPLE_RATE) + 1:int(spans[2][0] * SAMPLE_RATE) - 1]
    assert not silence.any() and noise.std() == pytest.approx(0.05, rel=0.01)


def test_long_recording_is_long_enough_and_its_reference_matches():
    samples, reference = long_recording(AUDIO_DIR, 5.0)
    assert samples.size >= 5 * 60 * SAMPLE_RATE
    references = json.loads((AUDIO_DIR / "references.json").read_text())
    texts = [entry["text"] for name, entry in sorted(references.items()) if entry.get("text") and name != "jfk.flac"]
    passes = reference.count(texts[0])
    assert passes >= 2 and reference == " ".join(texts * passes)  # whole passes over the clips, in order


def test_options_are_validated():
    with pytest.raises(ValueError, match="batch_size"):
        LongformBenchOptions(batch_size=0)
    with pytest.raises(ValueError, match="minutes"):
        LongformBenchOptions(minutes=0)
