"""HTTP transcription server: the contracts Whisper clients already speak, over one loaded model.

``xdna-ep serve`` binds its port, loads the model (``/health`` answers 503 "loading" meanwhile) and
serves (loopback by default):

- OpenAI's audio and models API (``server_openai``): ``POST /v1/audio/transcriptions``,
  ``POST /v1/audio/translations``, ``GET /v1/models``, ``GET /v1/models/{id}``;
- whisper.cpp server's ``POST /inference`` (``server_whisper_cpp``);
- ``POST /transcribe`` (here): ``file`` -> json with text, segments, language, timing and device statistics;
- ``GET /health``: 200 when the server can take work now; 503 naming why not (loading, draining,
  device lost, queue full), for load balancers;
- ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus text format) (``server_metrics``).

One request goes: bearer key (401) -> a place in the bounded queue (``server_queue``: 503 with
``Retry-After`` when full or draining, before any upload is read) -> the upload streamed into a
private temporary folder (``server_uploads``: 413 over the size limit) -> form fields checked (400
naming the field) -> the audio checked as a stream (400 when undecodable or empty; 413 over the
duration limit, from the container's header before decoding when it declares the duration, else
as soon as the decoded samples pass the limit; no more than a block of samples is held) -> wait for
the device, which runs one transcription at a time in a worker thread, decoding the file and
computing its log-mel a window at a time -> response. Nothing a client sends (file name, field
value) is used as a path.

Memory: a request holds at most one decoded block (``xdna_ep.audio.DECODE_BLOCK_BYTES``, 4 MiB, and
10 s of resampled audio) while its audio is checked, and its upload sits on disk until it is answered;
the running transcription holds about two 30-s windows of samples and log-mel. So the queue's
requests add a few MB each, not their recording.

SIGTERM drains: ``/health`` and new requests answer 503 (a load balancer sends them elsewhere), the
admitted requests run to their end, then the server exits (0). A second SIGTERM, or SIGINT, stops it
at once (uvicorn's graceful shutdown).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

# FastAPI reads the handlers' annotations (strings, with the __future__ import) in this module's
# namespace, so Request and Response are imported here; starlette is light, fastapi is imported where used
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from xdna_ep.errors import AudioError, AudioTooLong
from xdna_ep.models.registry import DEFAULT_MODEL
from xdna_ep.server_metrics import CountResponses, ServerMetrics
from xdna_ep.server_queue import (
    DeviceQueue,
    device_totals,
    effective_device,
    lost_device,
    node_placement,
    run_transcription,
)
from xdna_ep.server_requests import (
    Answer,
    ClientGone,
    FormFields,
    Outcome,
    ParseFields,
    RequestError,
    TranscriptionRequest,
    _check_language,
    _check_task,
    _json_safe,
    _options_json,
    _segment_json,
    _temperatures,
    error_body,
    transcribe_options,
)
from xdna_ep.server_uploads import Upload, read_upload

if TYPE_CHECKING:
    from fastapi import FastAPI

    from xdna_ep.model import WhisperModel

__all__ = [
    "RequestError", "ServerOptions", "TranscriptionRequest", "_temperatures", "configure_parser", "create_app",
    "run_command",
]

log = logging.getLogger("xdna_ep.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9004
API_KEY_ENV = "XDNA_EP_API_KEY"  # read when --api-key is not given, so the key need not show in `ps`
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away before the answer"


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
    # float32, or int8 (MatMul weights in 8 bits, cached beside the model; device cpu only)
    compute_type: str = "float32"
    # ONNX Runtime intra-op threads per session; 0: one per physical core
    threads: int = 0
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
        from xdna_ep.models.quantize import check_compute_type

        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        check_compute_type(self.compute_type, self.device)
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: one per core), not {self.threads}")
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
            "options": _options_json(request),
            "timing": timing,
            "stats": _json_safe(transcription.stats),
            "device": _json_safe(outcome.device),
        }
    )


# ---------------------------------------------------------------------------------------------------
# the application


class ServedModel:
    """The model the server serves, loaded on a thread once the server listens, and whether it can work.

    ``not_ready()`` names why the server cannot take work now (None when it can): loading, a failed
    load, draining, a lost device, a full queue. Read on the event loop's thread; the loading thread
    sets ``model`` or ``load_error`` once.
    """

    def __init__(self, load: Callable[[], WhisperModel], queue: DeviceQueue) -> None:
        self._load = load
        self.queue = queue
        self.model: WhisperModel | None = None
        self.load_error: str | None = None
        self.device_lost: str | None = None  # set after a transcription found the device unusable
        self.loaded = threading.Event()

    def load(self) -> None:
        try:
            self.model = self._load()
        except Exception as error:  # the server cannot serve: say why, then the server stops
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("the model failed to load: %s", self.load_error)
        finally:
            self.loaded.set()

    def __call__(self) -> WhisperModel:
        """The loaded model; RequestError 503 while it loads."""
        if self.model is None:
            raise RequestError(503, self.not_ready() or "the model is not loaded", headers={"Retry-After": "5"})
        return self.model

    def not_ready(self) -> str | None:
        if self.load_error is not None:
            return f"the model failed to load: {self.load_error}"
        if self.model is None:
            return "loading the model"
        if self.queue.draining:
            return "draining: finishing the requests it holds, then stopping"
        if self.device_lost is not None:
            return self.device_lost
        if self.queue.full:
            return f"queue full: {self.queue.admitted} requests are running or queued (at most {self.queue.capacity})"
        return None


def create_app(options: ServerOptions, load: Callable[[], WhisperModel]) -> FastAPI:
    """The FastAPI application serving the model ``load()`` returns under ``options``' limits and key.

    ``load`` is called on a thread when the application starts (``/health`` answers 503 "loading"
    until it returns; ``lambda: model`` serves a model already loaded). Creates the private upload folder
    (mode 0700); the application's shutdown removes it. ``app.state.queue`` is the device queue
    (``run_command`` drains it on SIGTERM), ``app.state.served`` the ``ServedModel``.
    """
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from xdna_ep import __version__, server_openai, server_whisper_cpp
    from xdna_ep.audio import measure_audio

    upload_folder = Path(tempfile.mkdtemp(prefix="xdna-ep-serve-"))
    queue = DeviceQueue(options.max_queue)
    served = ServedModel(load, queue)
    metrics = ServerMetrics(
        queue,
        ready=lambda: served.not_ready() is None,
        device_totals=lambda: device_totals(served.model) if served.model is not None else {},
    )
    stats = metrics.stats

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        log.info("uploads go to %s", upload_folder)
        threading.Thread(target=served.load, name="xdna-ep-load", daemon=True).start()
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
    app.add_middleware(CountResponses, metrics=metrics)
    app.state.queue = queue
    app.state.served = served

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

    def check_audio(upload: Upload) -> float:
        """Seconds of audio in the upload, decoded as a stream (one block held); 400 or 413 when refused."""
        if upload.audio_path is None:
            raise RequestError(400, "no audio: the form needs a 'file' part holding the recording", "file")
        try:
            return measure_audio(upload.audio_path, options.max_audio_seconds)
        except AudioTooLong as error:
            raise RequestError(
                413, f"audio too long: {error.describe(error.seconds, error.max_seconds)}; this server accepts "
                f"at most {options.max_audio_seconds:g} s", "file",
            ) from None
        except AudioError as error:
            message = str(error).replace(str(upload.audio_path), "the uploaded file")
            raise RequestError(400, message, "file") from None

    async def serve_transcription(request: Request, parse: ParseFields, answer: Answer) -> Response:
        model = served()
        queue.admit()
        try:
            upload = await read_upload(request, upload_folder, options.max_upload_bytes)
            try:
                wanted = parse(FormFields(upload.fields), model)
                try:
                    pipeline_options = transcribe_options(wanted)
                except ValueError as error:
                    raise RequestError(400, str(error)) from None
                start = time.perf_counter()
                audio_seconds = await run_in_threadpool(check_audio, upload)
                decode_seconds = time.perf_counter() - start
                metrics.record_decode(decode_seconds)
                queued = time.perf_counter()
                audio_path = upload.audio_path
                transcription, transcribe_seconds, device_work = await queue.run(
                    lambda cancelled: run_transcription(model, audio_path, pipeline_options, cancelled), request
                )
                queue_seconds = time.perf_counter() - queued - transcribe_seconds
            finally:
                upload.discard()
        except (ClientGone, ClientDisconnect):
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        finally:
            queue.release()
        served.device_lost = lost_device(model, device_work)
        if served.device_lost:
            log.error("%s", served.device_lost)
        device, profile = effective_device(model)
        device_work = {"device": device, "profile": profile, **device_work}
        outcome = Outcome(transcription, audio_seconds, decode_seconds, queue_seconds, transcribe_seconds, device_work)
        metrics.record(outcome)
        return answer(wanted, outcome)

    server_openai.add_routes(app, serve_transcription, served)
    server_whisper_cpp.add_routes(app, serve_transcription)

    @app.post("/transcribe", summary="text, segments, language, timing and device statistics")
    async def transcribe_form(request: Request) -> Response:
        return await serve_transcription(request, simple_request, full_response)

    @app.get("/health", summary="200 when the server can take work now; 503 naming why not")
    async def health() -> Response:
        reason = served.not_ready()
        body: dict[str, Any] = {
            "status": "ok" if reason is None else "unavailable", "ready": reason is None, "version": __version__,
        }
        if reason is not None:
            body["reason"] = reason
        if served.model is not None:
            device, profile = effective_device(served.model)
            body.update(model=served.model.name, multilingual=served.model.is_multilingual, device=device,
                        profile=profile, compute_type=served.model.compute_type)
        return JSONResponse(body, 200 if reason is None else 503, None if reason is None else {"Retry-After": "5"})

    @app.get("/metrics", summary="Prometheus text format: requests, queue, audio, real-time factor, NPU, latency")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/stats", summary="requests, audio seconds, real-time factor, device statistics")
    async def server_stats() -> dict[str, Any]:
        model = served()
        device, profile = effective_device(model)
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
                "capacity": queue.capacity, "draining": queue.draining,
            },
            "device": _json_safe(
                {"device": device, "profile": profile, **device_totals(model), "placement": node_placement(model)}
            ),
        }

    return app


# ---------------------------------------------------------------------------------------------------
# command line


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from xdna_ep.ep.device import DEFAULT_PROFILE, PROFILES
    from xdna_ep.model import DEVICES
    from xdna_ep.models.quantize import COMPUTE_TYPES

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
        "--compute-type", default=defaults.compute_type, choices=COMPUTE_TYPES,
        help="int8: MatMul weights in 8 bits, CPU device only (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="ONNX Runtime threads per session (default: 0, one per core)"
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
        compute_type=args.compute_type,
        threads=args.threads,
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


def _uvicorn_server(config: Any, app: FastAPI) -> Any:
    """uvicorn's server, with SIGTERM draining the queue first and a failed model load stopping it."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        exit_code = 0

        def handle_exit(self, sig: int, frame: Any) -> None:
            queue = app.state.queue
            if sig == signal.SIGTERM and not queue.draining:
                log.info("SIGTERM: draining (%d requests held); a second SIGTERM stops at once", queue.admitted)
                queue.drain()
                return
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            queue, served = app.state.queue, app.state.served
            if queue.draining and queue.admitted == 0 and not self.should_exit:
                log.info("drained: stopping")
                self.should_exit = True
            if served.load_error is not None and not self.should_exit:
                self.exit_code = 1
                self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)


def run_command(args: argparse.Namespace) -> int:
    """``xdna-ep serve``: bind, load the model once while answering /health, serve until SIGTERM (drain) or SIGINT."""
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
        host, port = sock.getsockname()[:2]

        def load() -> WhisperModel:
            model = WhisperModel(
                options.model, device=options.device, profile=options.profile,
                compute_type=options.compute_type, threads=options.threads,
            )
            log.info("serving %s on device %s at http://%s:%d", model.name, model.device, host, port)
            return model

        app = create_app(options, load)
        # the drain waits for the admitted requests itself; uvicorn's own grace is for idle connections
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=10)
        server = _uvicorn_server(config, app)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if server.exit_code:
        print(f"error: {app.state.served.not_ready()}", file=sys.stderr)
    return server.exit_code
