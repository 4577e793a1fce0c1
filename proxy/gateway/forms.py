"""Multipart form bodies (audio uploads, image edits), read without I/O.

A small ``multipart/form-data`` reader (RFC 7578 over RFC 2046) over bytes:
linear in the body, bounded in parts and header size, and strict where a
lenient reading could let the client meter one thing and the upstream read
another (two ``file`` parts, two ``model`` fields, two ``name`` parameters).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["MAX_BOUNDARY_CHARS", "MAX_PARTS", "MAX_PART_HEADER_BYTES", "Form", "parse_form"]

MAX_PARTS = 1_000  # an SDK call sends a handful; each costs a few objects to read
MAX_PART_HEADER_BYTES = 16 * 1024  # one part's header block, its closing blank line excluded
MAX_BOUNDARY_CHARS = 70  # RFC 2046

_PADDING = re.compile(rb"[ \t]*\r\n")  # after a delimiter: transport padding, then CRLF
_PARAM_PUNCT = re.compile(r"[=;]")
_QUOTED = re.compile(r'((?:[^"\\]|\\.)*)"?', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # name -> (filename, bytes)


@dataclass(frozen=True, slots=True)
class _Part:
    name: str | None
    filename: str | None
    charset: str | None
    content: bytes


def parse_form(content_type: str, body: bytes) -> Form:
    """The text fields and files of a ``multipart/form-data`` body.

    Raises ValueError when the body is not one, is malformed, has more than
    MAX_PARTS parts or a part header block over MAX_PART_HEADER_BYTES, or
    repeats a field name (array fields, ``name[]`` as the SDK sends lists,
    may repeat; their first value is kept). Parts without a name are skipped;
    a part with a ``filename`` (or ``filename*``) parameter is a file.
    """
    delimiter = b"\r\n--" + _boundary(content_type)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    parts = 0
    start, closed = _first_part(body, delimiter)
    while not closed:
        end, after, closed = _next_delimiter(body, delimiter, start)
        parts += 1
        if parts > MAX_PARTS:
            raise ValueError(f"more than {MAX_PARTS} parts")
        _add(fields, files, _read_part(body, start, end))
        start = after
    return Form(fields=fields, files=files)


def _boundary(content_type: str) -> bytes:
    kind, params = _header_params(content_type)
    if kind != "multipart/form-data":
        raise ValueError("expected multipart/form-data")
    boundary = params.get("boundary", "")
    if not 0 < len(boundary) <= MAX_BOUNDARY_CHARS or not boundary.isascii() or not boundary.isprintable():
        raise ValueError("multipart/form-data needs a boundary of 1 to 70 printable ASCII characters")
    return boundary.encode("ascii")


def _first_part(body: bytes, delimiter: bytes) -> tuple[int, bool]:
    """Where the first part starts (after any preamble), and whether the form is already closed."""
    if body.startswith(delimiter[2:]):  # no preamble: the body opens with the delimiter, no CRLF before
        found = _delimiter_end(body, len(delimiter) - 2)
        if found is not None:
            return found
    _, after, closed = _next_delimiter(body, delimiter, 0)
    return after, closed


def _next_delimiter(body: bytes, delimiter: bytes, start: int) -> tuple[int, int, bool]:
    """The next delimiter line from ``start``: where it begins, where the next
    part starts and whether it closes the form. A line that merely begins with
    the delimiter (``--boundaryX``) is content."""
    at = body.find(delimiter, start)
    while at >= 0:
        found = _delimiter_end(body, at + len(delimiter))
        if found is not None:
            return at, *found
        at = body.find(delimiter, at + 1)
    raise ValueError("multipart body ends without its closing boundary")


def _delimiter_end(body: bytes, pos: int) -> tuple[int, bool] | None:
    if body.startswith(b"--", pos):
        return pos + 2, True  # the close delimiter; the epilogue after it is ignored
    padding = _PADDING.match(body, pos)
    return (padding.end(), False) if padding else None


def _read_part(body: bytes, start: int, end: int) -> _Part:
    if body.startswith(b"\r\n", start, end):  # no headers at all
        headers, content_start = {}, start + 2
    else:
        stop = min(end, start + MAX_PART_HEADER_BYTES + 4)
        blank = body.find(b"\r\n\r\n", start, stop)
        if blank < 0:
            if stop < end:
                raise ValueError(f"a part's headers exceed {MAX_PART_HEADER_BYTES} bytes")
            raise ValueError("a part has no blank line after its headers")
        headers, content_start = _headers(body[start:blank]), blank + 4
    _, disposition = _header_params(headers.get("content-disposition", ""))
    _, content_type = _header_params(headers.get("content-type", ""))
    filename = disposition.get("filename")
    if filename is None and "filename*" in disposition:
        filename = _extended_value(disposition["filename*"])
    return _Part(disposition.get("name"), filename, content_type.get("charset"), body[content_start:end])


def _headers(block: bytes) -> dict[str, str]:
    """A part's header fields by lower-case name; folded lines are joined."""
    lines: list[str] = []
    for line in block.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise ValueError("a part has a malformed header line")
        if name in headers:
            raise ValueError(f"a part repeats its {_shown(name)} header")
        headers[name] = value.strip()
    return headers


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """The lower-cased main value of a header and its ``;``-separated
    parameters (names lower-cased, quoted values unquoted). One pass: every
    search starts where the previous one ended."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while (punct := _PARAM_PUNCT.search(rest, pos)) is not None:
        if punct.group() == ";":
            pos = punct.end()  # a parameter without a value: ignored
            continue
        name = rest[pos : punct.start()].strip().lower()
        param, pos = _param_value(rest, punct.end())
        if name in params:
            raise ValueError(f"repeated parameter {_shown(name)}")
        params[name] = param
    return main.strip().lower(), params


def _param_value(text: str, pos: int) -> tuple[str, int]:
    """A parameter value starting at ``pos`` and where the next parameter starts."""
    while text.startswith((" ", "\t"), pos):
        pos += 1
    if text.startswith('"', pos):
        quoted = _QUOTED.match(text, pos + 1)
        assert quoted is not None  # the pattern matches the empty string
        value = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
        semicolon = text.find(";", quoted.end())
    else:
        semicolon = text.find(";", pos)
        value = text[pos : len(text) if semicolon < 0 else semicolon].strip()
    return value, len(text) if semicolon < 0 else semicolon + 1


def _extended_value(value: str) -> str:
    """An RFC 8187 ``charset'language'percent-encoded`` value, decoded."""
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    return unquote(encoded, encoding=_codec(charset), errors="replace")


def _add(fields: dict[str, str], files: dict[str, tuple[str, bytes]], part: _Part) -> None:
    name = part.name
    if name is None:
        return
    if name in fields or name in files:
        if name.endswith("[]"):
            return
        kind = "file field" if part.filename is not None or name in files else "field"
        raise ValueError(f"duplicate {kind} {_shown(name)}")
    if part.filename is not None:
        files[name] = (part.filename, part.content)
    else:
        fields[name] = _text(part.content, part.charset)


def _shown(name: str) -> str:
    """A client-sent name for an error message: quoted, escaped and short (it may reach a log line)."""
    return repr(name[:64])


def _text(content: bytes, charset: str | None) -> str:
    return content.decode(_codec(charset), "replace")


def _codec(charset: str | None) -> str:
    """The codec for a client-named charset: a plain text encoding, else UTF-8.

    Only the Unicode, ASCII, ISO 8859 and Windows code pages are honoured: a
    charset is client input, and Python's codecs include ones that are not
    text (``zlib``), reject ``errors="replace"`` (``idna``) or decode in
    quadratic time (``punycode``).
    """
    try:
        name = codecs.lookup(charset or "utf-8").name
    except (LookupError, ValueError):
        return "utf-8"
    return name if name == "ascii" or name.startswith(("utf-", "iso8859-", "cp125")) else "utf-8"
