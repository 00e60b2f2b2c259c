"""Streamed multipart uploads: file parts go straight to disk under the data directory, never to memory.

Starlette's form parser spools files to the system temp directory and then they would be copied;
enrolment archives are hundreds of megabytes, so this parser writes each file part into the
request's own folder (same file system as the sample store, so storing is a rename), counts bytes
and parts as they arrive, and keeps only small text fields in memory. Disk writes run in a worker
thread, batched per megabyte, so the event loop keeps serving inspections meanwhile.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from model.errors import InputError, UnsupportedMediaError
from service.errors import PayloadTooLargeError

WRITE_BATCH_BYTES = 1 << 20
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64


@dataclass
class ReceivedFile:
    field: str
    filename: str
    path: Path
    size: int = 0
    complete: bool = False  # its closing boundary arrived


@dataclass
class ReceivedForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[ReceivedFile] = field(default_factory=list)

    def value(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    def files_of(self, name: str) -> list[ReceivedFile]:
        return [received for received in self.files if received.field == name]


class _DiskForm:
    """python-multipart callbacks that write file parts to numbered files in `directory`."""

    def __init__(self, directory: Path, max_files: int, charset: str) -> None:
        self.directory = directory
        self.max_files = max_files
        self.charset = charset
        self.form = ReceivedForm()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._field_name = ""
        self._file: ReceivedFile | None = None
        self._handle: IO[bytes] | None = None
        self._data = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._file = None
        self._data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InputError("a multipart part has no field name (Content-Disposition: form-data; name=...)")
        self._field_name = options[b"name"].decode(self.charset, errors="replace")
        if b"filename" in options:
            if len(self.form.files) >= self.max_files:
                raise PayloadTooLargeError(f"more than {self.max_files} files in one upload")
            filename = options[b"filename"].decode(self.charset, errors="replace")
            path = self.directory / f"part-{len(self.form.files):06d}"
            self._file = ReceivedFile(self._field_name, filename, path)
            self._handle = path.open("wb")
            self.form.files.append(self._file)
        elif sum(len(values) for values in self.form.fields.values()) >= MAX_FIELDS:
            raise InputError(f"more than {MAX_FIELDS} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None and self._handle is not None:
            self._handle.write(data[start:end])
            self._file.size += end - start
            return
        self._data += data[start:end]
        if len(self._data) > MAX_FIELD_BYTES:
            raise PayloadTooLargeError(
                f"form field {self._field_name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )

    def on_part_end(self) -> None:
        if self._handle is not None and self._file is not None:
            self._handle.close()
            self._handle = None
            self._file.complete = True
        elif self._file is None:
            text = self._data.decode(self.charset, errors="replace")
            self.form.fields.setdefault(self._field_name, []).append(text)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_multipart(request: Request, directory: Path, max_files: int) -> ReceivedForm:
    """Stream a multipart/form-data body into `directory` (created here; the caller removes it)."""
    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaError("send the samples as multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InputError("the multipart/form-data body has no boundary")
    charset = params.get(b"charset", b"utf-8").decode("latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "latin-1"
    await anyio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True))
    form = _DiskForm(directory, max_files, charset)
    parser = MultipartParser(boundary, form.callbacks())
    pending: list[bytes] = []
    pending_bytes = 0

    def write(chunks: list[bytes]) -> None:
        for chunk in chunks:
            parser.write(chunk)

    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= WRITE_BATCH_BYTES:
                batch, pending, pending_bytes = pending, [], 0
                await anyio.to_thread.run_sync(write, batch)
        await anyio.to_thread.run_sync(write, pending)
        parser.finalize()
    except FormParserError as error:
        raise InputError(f"malformed multipart/form-data body ({error})") from error
    finally:
        form.close()
    if any(not received.complete for received in form.form.files):
        raise InputError("the upload ended before its multipart body was complete")
    return form.form
