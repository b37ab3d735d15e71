"""Uploads: a multipart/form-data body streamed into a private folder, with its limits.

The ``file`` part goes to a file the server names (never the client's file name) in a folder only the
server can read; text fields are kept in memory, at most MAX_FORM_FIELDS of at most MAX_FIELD_BYTES.
An upload over the size limit is refused with 413 while it arrives (and before, from Content-Length).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from xdna_ep.server_requests import RequestError

MAX_FORM_FIELDS = 32  # text fields of one form besides the file
MAX_FIELD_BYTES = 64 * 1024  # one text field (a prompt is a few hundred tokens at most)
# an upload over the limit is still read, and dropped, up to this many times the limit, so that the
# client (still sending) gets its 413 instead of a reset connection; past that the connection is cut
DRAIN_FACTOR = 2


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

