"""HTTP transcription server: the contracts Whisper clients already speak, over one loaded model.

``xdna-ep serve`` loads the model once and serves (loopback by default):

- ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``: OpenAI's audio API (multipart
  ``file``, ``model``, ``language``, ``prompt``, ``temperature``, ``response_format`` json | text | srt |
  vtt | verbose_json, ``timestamp_granularities[]=segment``), so the ``openai`` client works unchanged.
- ``POST /inference``: whisper.cpp server's multipart contract (``file``, ``response_format``,
  ``language``, ``temperature``, ``temperature_inc``, ``prompt``, ``translate``, ``no_timestamps``).
- ``POST /transcribe``: ``file`` -> json with text, segments, language, timing and device statistics.
- ``GET /health`` (model, device, profile, ready) and ``GET /stats`` (requests, audio seconds,
  real-time factor, device statistics).

One request goes: bearer key (401) -> a place in the bounded queue (503 with ``Retry-After`` when
full, before any upload is read) -> the upload streamed into a private temporary folder (413 over the
size limit) -> form fields checked (400 naming the field) -> decode (400 when undecodable or empty,
413 over the duration limit) -> wait for the device, which runs one transcription at a time in a
worker thread while the event loop stays free (a request whose client has gone is skipped) ->
response. Nothing a client sends (file name, field value) is used as a path.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Collection, TypeVar

# FastAPI reads the handlers' annotations (strings, with the __future__ import) in this module's
# namespace, so Request and Response are imported here; starlette is light, fastapi is imported where used
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from xdna_ep.errors import AudioError
from xdna_ep.models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI

    from xdna_ep.model import WhisperModel
    from xdna_ep.transcribe import Segment, TranscribeOptions, Transcription

__all__ = ["RequestError", "ServerOptions", "configure_parser", "create_app", "run_command"]

log = logging.getLogger("xdna_ep.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9004
API_KEY_ENV = "XDNA_EP_API_KEY"  # read when --api-key is not given, so the key need not show in `ps`
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

MAX_FORM_FIELDS = 32  # text fields of one form besides the file
MAX_FIELD_BYTES = 64 * 1024  # one text field (a prompt is a few hundred tokens at most)
# an upload over the limit is still read, and dropped, up to this many times the limit, so that the
# client (still sending) gets its 413 instead of a reset connection; past that the connection is cut
DRAIN_FACTOR = 2
DISCONNECT_POLL_SECONDS = 0.1  # how often a queued request checks that its client is still there
RETRY_AFTER_DEFAULT_SECONDS = 1.0  # per queued request, until a transcription has been timed

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
TEXT_CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
OPENAI_MODEL_ALIAS = "whisper-1"  # the model name OpenAI clients send; served by the loaded model
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")

T = TypeVar("T")


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs: its model, where it listens, who may call it, and its limits.

    Validated on construction (ValueError naming the bad value).
    """

    # a model name the registry knows (tiny.en, base) or an exported model folder
    model: str = DEFAULT_MODEL
    # where the xdna ops run: cpu, sim, npu or auto (xdna_ep.model.DEVICES)
    device: str = "cpu"
    # NPU profile the cost model and simulator describe (npu1, npu2); None: the device's own, else npu1
    profile: str | None = None
    # address to bind; loopback unless the operator opens it up on purpose
    host: str = DEFAULT_HOST
    # TCP port; 0 lets the OS pick a free one
    port: int = DEFAULT_PORT
    # with a key, every request needs "Authorization: Bearer <key>" (401 otherwise)
    api_key: str | None = None
    # largest accepted audio upload in bytes (OpenAI's audio API takes up to 25 MB)
    max_upload_bytes: int = 25 * 1024 * 1024
    # longest accepted recording in seconds
    max_audio_seconds: float = 30 * 60.0
    # requests that may wait for the device besides the one it runs; more are answered 503
    max_queue: int = 16

    def __post_init__(self) -> None:
        from xdna_ep.model import DEVICES

        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, not {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty (leave it out to serve without a key)")
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, not {self.max_upload_bytes}")
        if not self.max_audio_seconds > 0:
            raise ValueError(f"max_audio_seconds must be > 0, not {self.max_audio_seconds}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, not {self.max_queue}")


# ---------------------------------------------------------------------------------------------------
# errors


class RequestError(Exception):
    """A request the server refuses: HTTP status, a message naming the problem, the field at fault.

    Answered in OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, which also
    satisfies whisper.cpp clients (they look for an ``error`` key).
    """

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}


class ClientGone(Exception):
    """The client closed its connection before its transcription was answered."""


_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 503: "server_busy_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": status}}


# ---------------------------------------------------------------------------------------------------
# uploads: multipart streamed into a private folder, with limits


@dataclass
class Upload:
    """A multipart form: its text fields, and its ``file`` part as a private file (or None)."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    audio_path: Path | None = None
    audio_bytes: int = 0

    def discard(self) -> None:
        """Delete the file (each request does, whatever its outcome)."""
        if self.audio_path is not None:
            self.audio_path.unlink(missing_ok=True)
            self.audio_path = None


class _FormReader:
    """python-multipart callbacks: text fields kept in memory, the ``file`` part written to ``folder``.

    The file is named by the server (a random hex name), never by the client's file name.
    """

    def __init__(self, folder: Path, max_file_bytes: int) -> None:
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self.too_large = False
        self._file: IO[bytes] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        self._is_file = False
        self._n_fields = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise RequestError(400, "a multipart part has no name in its Content-Disposition header")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options or self._name == "file"
        if self._is_file:
            if self._name != "file":
                raise RequestError(400, f"unexpected file part {self._name!r}: the audio goes in 'file'", self._name)
            if self.upload.audio_path is not None:
                raise RequestError(400, "more than one 'file' part: send one recording per request", "file")
            self.upload.audio_path = self.folder / f"{uuid.uuid4().hex}.upload"
            descriptor = os.open(self.upload.audio_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(descriptor, "wb")
        else:
            self._n_fields += 1
            if self._n_fields > MAX_FORM_FIELDS:
                raise RequestError(400, f"too many form fields (at most {MAX_FORM_FIELDS})")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            if len(self._value) + end - start > MAX_FIELD_BYTES:
                raise RequestError(400, f"form field {self._name!r} is over {MAX_FIELD_BYTES} bytes", self._name)
            self._value += data[start:end]
            return
        self.upload.audio_bytes += end - start
        if self.upload.audio_bytes > self.max_file_bytes:
            self.too_large = True
            self.close_file()
            return
        assert self._file is not None
        self._file.write(data[start:end])

    def _part_end(self) -> None:
        if self._is_file:
            self.close_file()
        else:
            self.upload.fields.setdefault(self._name, []).append(self._value.decode("utf-8", "replace"))

    @property
    def inside_file_part(self) -> bool:
        return self._file is not None

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close_file()
        self.upload.discard()


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(413, f"upload too large: this server accepts audio files of at most {max_bytes} bytes", "file")


async def read_upload(request: Request, folder: Path, max_file_bytes: int) -> Upload:
    """Stream a multipart/form-data body into an ``Upload`` whose file lies in ``folder``.

    RequestError 415 for another content type, 400 for a malformed body, 413 for a file over
    ``max_file_bytes`` (checked while the bytes arrive, and against Content-Length up front).
    """
    content_type, parameters = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise RequestError(415, f"expected a multipart/form-data body with the audio in a 'file' part, got {shown}")
    boundary = parameters.get(b"boundary")
    if not boundary:
        raise RequestError(400, "multipart/form-data body without a boundary parameter")
    drain_limit = DRAIN_FACTOR * max_file_bytes + MAX_FORM_FIELDS * MAX_FIELD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > drain_limit:
        raise _too_large(max_file_bytes)

    reader = _FormReader(folder, max_file_bytes)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if reader.too_large:
                if received > drain_limit:
                    break
                continue
            parser.write(chunk)
        if not reader.too_large:
            parser.finalize()
    except FormParserError as error:
        reader.discard()
        raise RequestError(400, f"malformed multipart/form-data body: {error}") from None
    except BaseException:
        reader.discard()
        raise
    if reader.too_large:
        reader.discard()
        raise _too_large(max_file_bytes)
    if reader.inside_file_part:  # the body ended before the file part did
        reader.discard()
        raise RequestError(400, "malformed multipart/form-data body: it ends inside the 'file' part")
    return reader.upload


# ---------------------------------------------------------------------------------------------------
# form fields -> what to transcribe and how to answer


class FormFields:
    """The text fields of one form, read by name with the check each contract needs (400 naming the field).

    A list field may arrive as ``name[]`` (OpenAI's client) or repeated ``name``; both are read.
    """

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def reject_unknown(self, known: Collection[str], unsupported: dict[str, str] | None = None) -> None:
        for name in self.fields:
            base = name[:-2] if name.endswith("[]") else name
            if unsupported and base in unsupported:
                raise RequestError(400, f"field {base!r} is not supported by this server: {unsupported[base]}", base)
            if base not in known:
                raise RequestError(
                    400, f"unknown field {name!r}; this endpoint takes file, {', '.join(sorted(known))}", name
                )

    def values(self, name: str) -> list[str]:
        return [value.strip() for key in (name, f"{name}[]") for value in self.fields.get(key, [])]

    def text(self, name: str) -> str | None:
        values = self.values(name)
        if len(values) > 1:
            raise RequestError(400, f"field {name!r} given {len(values)} times; give it once", name)
        return values[0] if values and values[0] != "" else None

    def choice(self, name: str, choices: Collection[str], default: str) -> str:
        value = self.text(name)
        if value is None:
            return default
        if value not in choices:
            raise RequestError(400, f"{name} must be one of {', '.join(choices)}, not {value!r}", name)
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.text(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise RequestError(400, f"{name} must be a number, not {value!r}", name) from None
        if not low <= number <= high:
            raise RequestError(400, f"{name} must be between {low:g} and {high:g}, not {value}", name)
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self.text(name)
        if value is None:
            return default
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise RequestError(400, f"{name} must be true or false, not {value!r}", name)


@dataclass(frozen=True)
class TranscriptionRequest:
    """What one request asks for, once its fields are checked; independent of the contract it came in."""

    task: str = "transcribe"  # transcribe or translate (to English)
    language: str | None = None  # language code; None detects it (multilingual) or means English
    temperature: float = 0.0  # first decoding temperature
    temperature_increment: float = 0.2  # added on each fallback; 0 disables the fallback
    prompt: str | None = None  # text of the preceding speech, conditions the first window
    timestamps: bool = True  # segments with start/end times (False: text only)
    response_format: str = "json"


def _temperatures(request: TranscriptionRequest) -> tuple[float, ...]:
    """openai-whisper's fallback schedule: from the first temperature up to 1.0 by the increment."""
    if request.temperature_increment <= 0:
        return (request.temperature,)
    steps = int(math.floor((1.0 - request.temperature) / request.temperature_increment + 1e-6))
    return tuple(round(request.temperature + i * request.temperature_increment, 6) for i in range(steps + 1))


# ---------------------------------------------------------------------------------------------------
# the device queue


class DeviceQueue:
    """Runs transcriptions one at a time on a worker thread; admits at most ``max_waiting + 1`` requests.

    A request is admitted before its upload is read, so a full server answers 503 at once, with a
    ``Retry-After`` estimated from recent transcription times. The admission counters change on the
    event loop's thread only; the worker thread only appends its timings.
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

    def admit(self) -> None:
        if self.admitted >= self.capacity:
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


# ---------------------------------------------------------------------------------------------------
# the pipeline, as the server calls it


@dataclass(frozen=True)
class Outcome:
    """One finished transcription and what it cost."""

    transcription: Transcription
    audio_seconds: float
    decode_seconds: float  # upload -> samples
    queue_seconds: float  # waiting for the device
    transcribe_seconds: float  # on the device thread
    device: dict[str, Any]  # what this transcription did on the device (run_transcription)


def transcribe_options(request: TranscriptionRequest) -> TranscribeOptions:
    """The pipeline's options for a checked request (ValueError names a bad combination)."""
    from xdna_ep.transcribe import TranscribeOptions

    return TranscribeOptions.from_kwargs(
        task=request.task,
        language=request.language,
        temperature=_temperatures(request),
        initial_prompt=request.prompt,
        without_timestamps=not request.timestamps,
    )


def run_transcription(
    model: WhisperModel, samples: np.ndarray, options: TranscribeOptions, cancelled: threading.Event
) -> tuple[Transcription, float, dict[str, Any]]:
    """Transcribe (n_samples,) float32 16-kHz ``samples`` on the calling (device) thread.

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
    result = transcribe(model, samples, options, on_segment=stop_if_cancelled)
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


# ---------------------------------------------------------------------------------------------------
# answers


def _segment_json(segment: Segment) -> dict[str, Any]:
    """One segment as openai-whisper / OpenAI's verbose_json write it."""
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def _subtitles(transcription: Transcription, response_format: str) -> str:
    from xdna_ep.writers import to_srt, to_vtt

    return to_srt(transcription) if response_format == "srt" else to_vtt(transcription)


def _verbose_json(request: TranscriptionRequest, outcome: Outcome) -> dict[str, Any]:
    transcription = outcome.transcription
    return {
        "task": request.task,
        "language": transcription.language,
        "duration": round(outcome.audio_seconds, 3),
        "text": transcription.text,
        "segments": [_segment_json(segment) for segment in transcription.segments],
    }


def _text_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    if request.response_format == "text":
        body = outcome.transcription.text.strip() + "\n"
    else:
        body = _subtitles(outcome.transcription, request.response_format)
    return Response(body, media_type=TEXT_CONTENT_TYPES[request.response_format])


def openai_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    """OpenAI's audio API answer: ``{"text", "usage"}``, verbose_json with segments, or plain text formats."""
    usage = {"type": "duration", "seconds": math.ceil(outcome.audio_seconds)}
    if request.response_format == "json":
        return JSONResponse({"text": outcome.transcription.text, "usage": usage})
    if request.response_format == "verbose_json":
        return JSONResponse({**_verbose_json(request, outcome), "usage": usage})
    return _text_response(request, outcome)


def whisper_cpp_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    """whisper.cpp server's answer: ``{"text"}``, verbose_json with segments, or plain text formats."""
    if request.response_format == "json":
        return JSONResponse({"text": outcome.transcription.text})
    if request.response_format == "verbose_json":
        return JSONResponse(_verbose_json(request, outcome))
    return _text_response(request, outcome)


def full_response(request: TranscriptionRequest, outcome: Outcome) -> Response:
    """``/transcribe``'s answer: text, segments, language, duration, timing and device statistics."""
    transcription = outcome.transcription
    timing = {
        "decode_audio_s": round(outcome.decode_seconds, 4),
        "queue_s": round(outcome.queue_seconds, 4),
        "transcribe_s": round(outcome.transcribe_seconds, 4),
        "real_time_factor": round(outcome.transcribe_seconds / outcome.audio_seconds, 4),
        "pipeline": _json_safe(transcription.timing),
    }
    return JSONResponse(
        {
            "text": transcription.text,
            "language": transcription.language,
            "duration": round(outcome.audio_seconds, 3),
            "segments": [_segment_json(segment) for segment in transcription.segments],
            "timing": timing,
            "stats": _json_safe(transcription.stats),
            "device": _json_safe(outcome.device),
        }
    )


def _json_safe(value: Any) -> Any:
    """Dataclasses, mappings and sequences of plain values -> JSON types (None stays None)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float):
        return round(value, 6)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------------
# the contracts: form fields -> TranscriptionRequest


def _check_language(model: WhisperModel, language: str | None, task: str) -> str | None:
    if language is None:
        return None
    language = language.lower()
    known = model.tokenizer.language_tokens
    if known and language not in known:
        raise RequestError(400, f"unknown language code {language!r}; known codes: {', '.join(known)}", "language")
    if not model.is_multilingual and language != "en":
        raise RequestError(400, f"model {model.name} is English-only: it cannot transcribe {language!r}", "language")
    return language


def _check_task(model: WhisperModel, task: str) -> None:
    if task == "translate" and not model.is_multilingual:
        raise RequestError(400, f"model {model.name} is English-only: translation needs a multilingual model", "task")


_OPENAI_UNSUPPORTED = {
    "stream": "streamed answers are not offered; leave it out or send false",
    "include": "log probabilities are not returned",
    "chunking_strategy": "the audio is cut into 30-s windows as Whisper does",
    "known_speaker_names": "no diarization",
    "known_speaker_references": "no diarization",
}


def openai_request(fields: FormFields, task: str, model: WhisperModel) -> TranscriptionRequest:
    """OpenAI's ``/v1/audio/transcriptions`` (task transcribe) and ``/v1/audio/translations`` fields."""
    known = {"model", "prompt", "response_format", "temperature", "timestamp_granularities", "stream"}
    if task == "transcribe":
        known.add("language")
    fields.reject_unknown(known, _OPENAI_UNSUPPORTED)
    if fields.flag("stream", False):
        raise RequestError(400, f"field 'stream' is not supported: {_OPENAI_UNSUPPORTED['stream']}", "stream")
    served = (OPENAI_MODEL_ALIAS, model.name)
    requested_model = fields.text("model")
    if requested_model is not None and requested_model not in served:
        raise RequestError(
            400, f"model {requested_model!r} is not served here; this server serves {' or '.join(served)}", "model"
        )
    response_format = fields.choice("response_format", RESPONSE_FORMATS, "json")
    for granularity in fields.values("timestamp_granularities"):
        if granularity == "word":
            raise RequestError(400, "word timestamps are not supported; use timestamp_granularities[]=segment",
                               "timestamp_granularities")
        if granularity != "segment":
            raise RequestError(400, f"timestamp_granularities must be segment, not {granularity!r}",
                               "timestamp_granularities")
        if response_format != "verbose_json":
            raise RequestError(400, "timestamp_granularities needs response_format=verbose_json",
                               "timestamp_granularities")
    _check_task(model, task)
    language = _check_language(model, fields.text("language"), task)
    return TranscriptionRequest(
        task=task,
        language="en" if task == "translate" else language,
        temperature=fields.number("temperature", 0.0, 0.0, 1.0),
        prompt=fields.text("prompt"),
        timestamps=response_format in ("srt", "vtt", "verbose_json"),
        response_format=response_format,
    )


# whisper.cpp's decoding knobs this pipeline has no equivalent for
_WHISPER_CPP_UNSUPPORTED = {
    name: "whisper.cpp decoding option without an equivalent here"
    for name in (
        "offset_t", "offset_n", "duration", "max_context", "max_len", "best_of", "beam_size", "audio_ctx",
        "word_thold", "entropy_thold", "logprob_thold", "debug_mode", "diarize", "tinydiarize", "split_on_word",
        "detect_language", "suppress_non_speech", "suppress_nst",
    )
}


def whisper_cpp_request(fields: FormFields, model: WhisperModel) -> TranscriptionRequest:
    """whisper.cpp server's ``/inference`` fields."""
    known = {"response_format", "language", "temperature", "temperature_inc", "prompt", "translate", "no_timestamps"}
    fields.reject_unknown(known, _WHISPER_CPP_UNSUPPORTED)
    response_format = fields.choice("response_format", RESPONSE_FORMATS, "json")
    task = "translate" if fields.flag("translate", False) else "transcribe"
    _check_task(model, task)
    language = fields.text("language")
    language = _check_language(model, None if language == "auto" else language, task)
    no_timestamps = fields.flag("no_timestamps", False)
    if no_timestamps and response_format in ("srt", "vtt"):
        raise RequestError(400, f"response_format {response_format} needs timestamps; drop no_timestamps",
                           "no_timestamps")
    return TranscriptionRequest(
        task=task,
        language=language,
        temperature=fields.number("temperature", 0.0, 0.0, 1.0),
        temperature_increment=fields.number("temperature_inc", 0.2, 0.0, 1.0),
        prompt=fields.text("prompt"),
        timestamps=not no_timestamps,
        response_format=response_format,
    )


def simple_request(fields: FormFields, model: WhisperModel) -> TranscriptionRequest:
    """``/transcribe``'s fields: all optional besides ``file``."""
    fields.reject_unknown({"language", "task", "temperature", "prompt", "timestamps"})
    task = fields.choice("task", ("transcribe", "translate"), "transcribe")
    _check_task(model, task)
    return TranscriptionRequest(
        task=task,
        language=_check_language(model, fields.text("language"), task),
        temperature=fields.number("temperature", 0.0, 0.0, 1.0),
        prompt=fields.text("prompt"),
        timestamps=fields.flag("timestamps", True),
    )


# ---------------------------------------------------------------------------------------------------
# statistics


@dataclass
class ServerStats:
    """Counters behind ``GET /stats``; changed on the event loop's thread only."""

    started: float = field(default_factory=time.time)
    requests: Counter[str] = field(default_factory=Counter)  # by path
    responses: Counter[int] = field(default_factory=Counter)  # by HTTP status
    transcriptions: int = 0
    audio_seconds: float = 0.0
    transcribe_seconds: float = 0.0

    def record(self, outcome: Outcome) -> None:
        self.transcriptions += 1
        self.audio_seconds += outcome.audio_seconds
        self.transcribe_seconds += outcome.transcribe_seconds


class _CountResponses:
    """ASGI middleware counting requests by path and responses by status (499: the client left)."""

    def __init__(self, app: Any, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.stats.requests[scope["path"]] += 1

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.stats.responses[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send)


# ---------------------------------------------------------------------------------------------------
# the application


CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away before the answer"


def create_app(options: ServerOptions, model: WhisperModel) -> FastAPI:
    """The FastAPI application serving ``model`` (already loaded) under ``options``' limits and key.

    Creates the private upload folder (mode 0700); the application's shutdown removes it.
    """
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    from xdna_ep import __version__
    from xdna_ep.audio import SAMPLE_RATE, load_audio

    upload_folder = Path(tempfile.mkdtemp(prefix="xdna-ep-serve-"))
    device, profile = effective_device(model)
    placement = node_placement(model)  # fixed when the sessions were built
    queue = DeviceQueue(options.max_queue)
    stats = ServerStats()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        log.info("uploads go to %s", upload_folder)
        try:
            yield
        finally:
            queue.shutdown()
            shutil.rmtree(upload_folder, ignore_errors=True)

    async def require_key(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise RequestError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(title="xdna-ep", version=__version__, lifespan=lifespan, dependencies=[Depends(require_key)])
    app.add_middleware(_CountResponses, stats=stats)

    @app.exception_handler(RequestError)
    async def refuse(request: Request, error: RequestError) -> Response:
        return JSONResponse(error_body(error.status, error.message, error.param), error.status, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return JSONResponse(error_body(error.status_code, str(error.detail)), error.status_code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return JSONResponse(error_body(422, f"invalid request: {error.errors()}"), 422)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> Response:
        # the traceback still goes to the server's log; the client gets the cause in one line
        return JSONResponse(error_body(500, f"transcription failed: {type(error).__name__}: {error}"), 500)

    def decode_upload(upload: Upload) -> np.ndarray:
        if upload.audio_path is None:
            raise RequestError(400, "no audio: the form needs a 'file' part holding the recording", "file")
        try:
            return load_audio(upload.audio_path)
        except AudioError as error:
            message = str(error).replace(str(upload.audio_path), "the uploaded file")
            raise RequestError(400, message, "file") from None

    async def serve_transcription(
        request: Request,
        parse: Callable[[FormFields], TranscriptionRequest],
        answer: Callable[[TranscriptionRequest, Outcome], Response],
    ) -> Response:
        queue.admit()
        try:
            upload = await read_upload(request, upload_folder, options.max_upload_bytes)
            try:
                wanted = parse(FormFields(upload.fields))
                try:
                    pipeline_options = transcribe_options(wanted)
                except ValueError as error:
                    raise RequestError(400, str(error)) from None
                start = time.perf_counter()
                samples = await run_in_threadpool(decode_upload, upload)
                decode_seconds = time.perf_counter() - start
            finally:
                upload.discard()
            audio_seconds = samples.size / SAMPLE_RATE
            if audio_seconds > options.max_audio_seconds:
                raise RequestError(
                    413,
                    f"audio too long: {audio_seconds:.1f} s; this server accepts at most "
                    f"{options.max_audio_seconds:g} s",
                    "file",
                )
            queued = time.perf_counter()
            transcription, transcribe_seconds, device_work = await queue.run(
                lambda cancelled: run_transcription(model, samples, pipeline_options, cancelled), request
            )
            queue_seconds = time.perf_counter() - queued - transcribe_seconds
        except (ClientGone, ClientDisconnect):
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            queue.release()
        device_work = {"device": device, "profile": profile, **device_work}
        outcome = Outcome(transcription, audio_seconds, decode_seconds, queue_seconds, transcribe_seconds, device_work)
        stats.record(outcome)
        return answer(wanted, outcome)

    @app.post("/v1/audio/transcriptions", summary="OpenAI audio API: transcribe")
    async def openai_transcriptions(request: Request) -> Response:
        return await serve_transcription(request, lambda f: openai_request(f, "transcribe", model), openai_response)

    @app.post("/v1/audio/translations", summary="OpenAI audio API: translate to English")
    async def openai_translations(request: Request) -> Response:
        return await serve_transcription(request, lambda f: openai_request(f, "translate", model), openai_response)

    @app.post("/inference", summary="whisper.cpp server contract")
    async def whisper_cpp_inference(request: Request) -> Response:
        return await serve_transcription(request, lambda f: whisper_cpp_request(f, model), whisper_cpp_response)

    @app.post("/transcribe", summary="text, segments, language, timing and device statistics")
    async def transcribe_form(request: Request) -> Response:
        return await serve_transcription(request, lambda f: simple_request(f, model), full_response)

    @app.get("/health", summary="model, device, profile, ready")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "ready": True,
            "model": model.name,
            "multilingual": model.is_multilingual,
            "device": device,
            "profile": profile,
            "version": __version__,
        }

    @app.get("/stats", summary="requests, audio seconds, real-time factor, device statistics")
    async def server_stats() -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - stats.started, 3),
            "requests": dict(stats.requests),
            "responses": {str(status): count for status, count in sorted(stats.responses.items())},
            "transcriptions": stats.transcriptions,
            "skipped_client_gone": queue.skipped_client_gone,
            "stopped_client_gone": queue.stopped_client_gone,
            "unread_client_gone": queue.unread_client_gone,
            "audio_seconds": round(stats.audio_seconds, 3),
            "transcribe_seconds": round(stats.transcribe_seconds, 3),
            "real_time_factor": round(stats.transcribe_seconds / stats.audio_seconds, 4) if stats.audio_seconds else None,
            "queue": {
                "admitted": queue.admitted, "waiting": queue.waiting, "running": queue.running,
                "capacity": queue.capacity,
            },
            "device": _json_safe(
                {"device": device, "profile": profile, **device_totals(model), "placement": placement}
            ),
        }

    return app


# ---------------------------------------------------------------------------------------------------
# command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from xdna_ep.ep.device import DEFAULT_PROFILE, PROFILES
    from xdna_ep.model import DEVICES

    defaults = ServerOptions()
    parser.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s, loopback)")
    parser.add_argument("--port", type=int, default=defaults.port, help="TCP port (default: %(default)s)")
    parser.add_argument("--model", default=defaults.model, help="model name or exported folder (default: %(default)s)")
    parser.add_argument("--device", default=defaults.device, choices=DEVICES, help="default: %(default)s")
    parser.add_argument(
        "--profile", default=defaults.profile, choices=sorted(PROFILES),
        help=f"which NPU the sim/npu devices describe (default: {DEFAULT_PROFILE})",
    )
    parser.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set)"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
        help="largest audio upload in MiB (default: %(default)g)",
    )
    parser.add_argument(
        "--max-audio-seconds", type=float, default=defaults.max_audio_seconds,
        help="longest recording in seconds (default: %(default)g)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=defaults.max_queue,
        help="requests that may wait for the device besides the running one; more get 503 (default: %(default)s)",
    )
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(
        model=args.model,
        device=args.device,
        profile=args.profile,
        host=args.host,
        port=args.port,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
        max_queue=args.max_queue,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), bound before the model loads so a taken port fails at once."""
    from xdna_ep.errors import XdnaError

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
    except OSError as error:
        raise XdnaError(f"cannot listen on {host}:{port}: {error}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise XdnaError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def run_command(args: argparse.Namespace) -> int:
    """``xdna-ep serve``: bind, load the model once, serve until interrupted (SIGINT/SIGTERM)."""
    import uvicorn

    from xdna_ep.model import WhisperModel

    try:
        options = options_from_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    if options.host not in LOOPBACK_HOSTS and options.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach it may use it", options.host)
    sock = listening_socket(options.host, options.port)
    try:
        model = WhisperModel(options.model, device=options.device, profile=options.profile)
        app = create_app(options, model)
        host, port = sock.getsockname()[:2]
        log.info("serving %s on device %s at http://%s:%d", model.name, model.device, host, port)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=10)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
