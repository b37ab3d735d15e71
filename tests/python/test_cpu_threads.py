"""xdna_ep.cpu_threads: NumPy's BLAS on one thread inside a transcription, the caller's setting after it."""

from __future__ import annotations

from threadpoolctl import threadpool_info

from xdna_ep.cpu_threads import single_threaded_blas


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_runs_on_one_thread_inside_and_as_before_outside():
    before = _blas_threads()
    assert before, "NumPy loads a BLAS library (OpenBLAS in its wheels)"

    @single_threaded_blas
    def inside() -> list[int]:
        return _blas_threads()

    assert inside() == [1] * len(before)
    assert _blas_threads() == before


def test_the_limit_is_restored_when_the_call_raises():
    before = _blas_threads()

    @single_threaded_blas
    def fails() -> None:
        raise ValueError("bad input")

    try:
        fails()
    except ValueError:
        pass
    assert _blas_threads() == before


def test_transcribe_keeps_its_signature():
    import inspect

    from xdna_ep.transcribe import transcribe

    assert list(inspect.signature(transcribe).parameters)[:2] == ["model", "audio"]
