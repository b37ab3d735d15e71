"""xdna_ep.cpu_threads: NumPy's BLAS on one thread inside a transcription, the caller's setting after it."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from xdna_ep.cpu_threads import blas_threads_for


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize("device", ["cpu", "npu", "auto"])
def test_blas_runs_on_one_thread_inside_and_as_before_outside(device):
    before = _blas_threads()
    assert before, "NumPy loads a BLAS library (OpenBLAS in its wheels)"
    with blas_threads_for(device):
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before


def test_the_simulator_keeps_its_blas_threads():
    before = _blas_threads()
    with blas_threads_for("sim"):  # its NPU work is NumPy's matrix products
        assert _blas_threads() == before


def test_the_limit_is_restored_when_the_transcription_raises(monkeypatch):
    import importlib

    transcribe_module = importlib.import_module("xdna_ep.transcribe")  # the module, not xdna_ep.transcribe()

    before = _blas_threads()
    seen = []

    def fails(model, audio, options, on_segment):
        seen.append(_blas_threads())
        raise ValueError("bad input")

    monkeypatch.setattr(transcribe_module, "_transcribe", fails)
    model = type("Model", (), {"device": "cpu"})()
    with pytest.raises(ValueError, match="bad input"):
        transcribe_module.transcribe(model, np.zeros(16000, np.float32))
    assert seen == [[1] * len(before)] and _blas_threads() == before
