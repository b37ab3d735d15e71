"""The server's device queue and what it runs: one transcription at a time on a worker thread, a
bounded number waiting, admission refused (503) when full or draining, and the device's counters.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from starlette.requests import Request

from xdna_ep.server_requests import ClientGone, RequestError

if TYPE_CHECKING:
    from xdna_ep.audio import AudioInput
    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import Segment, TranscribeOptions, Transcription

DISCONNECT_POLL_SECONDS = 0.1  # how often a queued request checks that its client is still there
RETRY_AFTER_DEFAULT_SECONDS = 1.0  # per queued request, until a transcription has been timed

T = TypeVar("T")


class DeviceQueue:
    """Runs transcriptions one at a time on a worker thread; admits at most ``max_waiting + 1`` requests.

    A request is admitted before its upload is read, so a full server answers 503 at once, with a
    ``Retry-After`` estimated from recent transcription times. The admission counters change on the
    event loop's thread only; the worker thread only appends its timings.

    Draining (``drain()``, on SIGTERM) refuses new requests with 503 while the admitted ones finish.
    """

    def __init__(self, max_waiting: int) -> None:
        self.capacity = max_waiting + 1
        self.admitted = 0
        self.skipped_client_gone = 0  # taken out of the queue before they started
        self.stopped_client_gone = 0  # stopped while running
        self.unread_client_gone = 0  # finished before the stop took effect; the answer had nobody to go to
        self._submitted = 0  # work handed to the worker and not yet returned (event loop's thread)
        self.running = 0  # work the worker is running, 0 or 1 (worker thread)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xdna-ep-device")
        self._recent_seconds: deque[float] = deque(maxlen=16)
        self.draining = False

    def drain(self) -> None:
        """Take no new request; the admitted ones run to their end."""
        self.draining = True

    @property
    def full(self) -> bool:
        return self.admitted >= self.capacity

    def admit(self) -> None:
        if self.draining:
            raise RequestError(
                503, "server draining: it finishes the requests it holds and stops; send this one to another server",
                headers={"Retry-After": "1"},
            )
        if self.full:
            raise RequestError(
                503,
                f"server busy: {self.admitted} requests are running or queued (at most {self.capacity}); "
                "retry after the time in the Retry-After header",
                headers={"Retry-After": str(self.retry_after_seconds())},
            )
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    @property
    def waiting(self) -> int:
        """Requests whose audio is decoded and that wait for the device."""
        return max(0, self._submitted - self.running)

    def retry_after_seconds(self) -> int:
        recent = list(self._recent_seconds)  # a copy: the worker thread appends to the deque
        per_request = statistics.median(recent) if recent else RETRY_AFTER_DEFAULT_SECONDS
        return max(1, math.ceil(per_request * self.admitted))

    async def run(self, work: Callable[[threading.Event], T], request: Request) -> T:
        """Run ``work(cancelled)`` on the device thread and return its result.

        While the work waits for its turn or runs, the request checks every DISCONNECT_POLL_SECONDS
        that its client is still connected. If the client has gone, queued work is taken out of the
        queue unstarted; running work has ``cancelled`` set, which it checks between segments, and
        is waited for (so the next request does not overlap it). Either way ClientGone is raised.
        """
        cancelled = threading.Event()
        future = self._executor.submit(self._timed, work, cancelled)
        waiter = asyncio.wrap_future(future)
        self._submitted += 1
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return waiter.result()
                if await request.is_disconnected():
                    if future.cancel():
                        self.skipped_client_gone += 1
                        raise ClientGone()
                    cancelled.set()
                    await asyncio.wait({waiter})
                    if isinstance(waiter.exception(), ClientGone):
                        self.stopped_client_gone += 1
                    else:
                        self.unread_client_gone += 1
                    raise ClientGone()
        finally:
            self._submitted -= 1

    def _timed(self, work: Callable[[threading.Event], T], cancelled: threading.Event) -> T:
        self.running += 1
        start = time.perf_counter()
        try:
            return work(cancelled)
        finally:
            if not cancelled.is_set():
                self._recent_seconds.append(time.perf_counter() - start)
            self.running -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)



def run_transcription(
    model: WhisperModel, audio: AudioInput, options: TranscribeOptions, cancelled: threading.Event
) -> tuple[Transcription, float, dict[str, Any]]:
    """Transcribe ``audio`` (a file, decoded a window at a time) on the calling (device) thread.

    Returns (Transcription, seconds it took, what it did on the device: the change of the device
    counters over the call, which are this call's alone since the device runs one at a time).
    Raises ClientGone at the next segment once ``cancelled`` is set.
    """
    from xdna_ep.transcribe import transcribe

    def stop_if_cancelled(segment: Segment) -> None:
        if cancelled.is_set():
            raise ClientGone()

    before = device_totals(model)
    start = time.perf_counter()
    result = transcribe(model, audio, options, on_segment=stop_if_cancelled)
    seconds = time.perf_counter() - start
    return result, seconds, _counter_change(before, device_totals(model))


def effective_device(model: WhisperModel) -> tuple[str, str | None]:
    """(device, profile) the sessions run with: ``auto`` and the default profile resolved by the session."""
    report = getattr(model.encoder, "report", None)  # an xdna_ep.InferenceSession's pass report
    return getattr(model.encoder, "device", model.device), report.profile if report is not None else model.profile


def device_totals(model: WhisperModel) -> dict[str, Any]:
    """The device layer's counters so far: calls, launches, bytes, modelled device time, fallbacks
    and their causes (``xdna_ep.ep.stats``). On the ``cpu`` device the stock graph runs on ONNX
    Runtime's CPU EP: no launch, no fallback, nothing else to count.
    """
    if effective_device(model)[0] == "cpu":
        return {"launches": 0, "fallbacks": 0, "fallback_causes": {}}
    from xdna_ep.ep import stats as ep_stats

    return ep_stats.snapshot()["totals"]


def _counter_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    change: dict[str, Any] = {}
    for name, value in after.items():
        if isinstance(value, dict):
            causes = Counter(value)
            causes.subtract(before.get(name, {}))
            change[name] = {cause: count for cause, count in causes.items() if count}
        else:
            change[name] = value - before.get(name, 0)
    return change


def node_placement(model: WhisperModel) -> dict[str, list[dict[str, Any]]]:
    """Per session, each fused node: where the partitioner placed it (npu or cpu) and why.

    Empty on the ``cpu`` device, whose sessions run the stock graph with no fused node.
    """
    sessions = {"encoder": model.encoder, "decoder": model.decoder, "decoder_with_past": model.decoder_with_past}
    placement = {}
    for role, session in sessions.items():
        report = getattr(session, "report", None)
        if report is not None:
            placement[role] = [
                {"node": node.node, "kind": node.kind, "shape": node.shape, "placement": node.placement,
                 "reason": node.reason}
                for node in report.placements
            ]
    return placement



def lost_device(model: WhisperModel, change: dict[str, Any]) -> str | None:
    """Why the device counts as lost after a transcription that did ``change`` on it, or None.

    On an NPU device (sim, npu) a transcription whose xdna calls all fell back to the CPU, none
    launched, found the device unusable (device lost, no hardware context left, designs missing):
    its answer is still right (recomputed on the CPU), but the server is no NPU server any more.
    """
    if effective_device(model)[0] == "cpu" or change.get("fallbacks", 0) == 0 or change.get("launches", 0) > 0:
        return None
    causes = ", ".join(f"{cause} x{count}" for cause, count in sorted(change.get("fallback_causes", {}).items()))
    return f"device lost: the last transcription's {change['fallbacks']} xdna calls all fell back to the CPU ({causes})"
