"""A ``multipart/form-data`` file upload read as it streams past (pure).

``POST /v1/files`` may carry hundreds of megabytes: the body is relayed to
the upstream chunk by chunk, and each chunk is also fed here, where a
streaming parser (python-multipart) picks out the text fields (``purpose``)
and hands the ``file`` part's bytes on as they come. Nothing is held but the
small fields. As strict as the whole-body reader (:mod:`.forms`): a second
``file`` part or a repeated field is refused, never guessed between.
"""

from __future__ import annotations

from collections.abc import Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

__all__ = ["MAX_FIELD_BYTES", "UploadReader", "boundary_of"]

MAX_FIELD_BYTES = 64 * 1024  # a text field (purpose, expires_after[...]) is a few bytes
_MAX_PARTS = 100


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 70:
        return None
    return boundary


class UploadReader:
    """Feed the body's chunks; ``fields`` holds the text fields, ``filename``
    and ``file_bytes`` the file part's, and ``on_file`` gets its bytes.
    :meth:`feed` and :meth:`end` raise ValueError on a malformed body."""

    def __init__(self, boundary: bytes, on_file: Callable[[bytes], None]) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_bytes = 0
        self._on_file = on_file
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self._field: bytearray | None = None
        self._name = ""
        self._ended = False
        self._error: str | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise ValueError(f"malformed multipart body: {exc}") from exc
        self._raise_if_refused()

    def end(self) -> None:
        self._parser.finalize()
        self._raise_if_refused()
        if not self._ended:
            raise ValueError("the multipart body ends before its closing boundary")
        if self.filename is None:
            raise ValueError("the upload has no 'file' part")

    def _raise_if_refused(self) -> None:
        if self._error is not None:
            raise ValueError(self._error)

    def _refuse(self, error: str) -> None:
        if self._error is None:
            self._error = error

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            self._refuse(f"more than {_MAX_PARTS} parts")
        self._disposition = b""

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            self._refuse("a part has no form-data name")
            return
        self._name = name.decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._name == "file":
            if self.filename is not None:
                self._refuse("two 'file' parts")
            self.filename = (filename or b"").decode("utf-8", "replace")
            self._in_file = True
        elif self._name in self.fields:
            self._refuse(f"field {self._name!r} given twice")
        else:
            self._field = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._error is not None:
            return
        if self._in_file:
            self.file_bytes += end - start
            self._on_file(data[start:end])
        elif self._field is not None:
            self._field += data[start:end]
            if len(self._field) > MAX_FIELD_BYTES:
                self._refuse(f"field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._field is not None and self._error is None:
            try:
                self.fields[self._name] = self._field.decode("utf-8")
            except UnicodeDecodeError:
                self._refuse(f"field {self._name!r} is not UTF-8")
        self._field = None
        self._in_file = False

    def _end(self) -> None:
        self._ended = True
