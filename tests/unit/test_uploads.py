"""A file upload read as it streams (proxy/gateway/uploads.py) and a batch
input file read line by line (pricing/batch_input.py): the same answer
however the bytes are cut into chunks, and strict where it matters."""

from __future__ import annotations

import orjson
import pytest

from taximeter.pricing import batch_input, jsonl
from taximeter.pricing.batch_input import BatchInputReader
from taximeter.proxy.gateway.uploads import UploadReader, boundary_of

BOUNDARY = "----taximeter-test"


def form(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def read_form(body: bytes, chunk: int) -> tuple[UploadReader, bytes]:
    got = bytearray()
    reader = UploadReader(BOUNDARY.encode(), got.extend)
    for i in range(0, len(body), chunk):
        reader.feed(body[i : i + chunk])
    reader.end()
    return reader, bytes(got)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10**6])
def test_any_chunking_reads_the_same_form(chunk: int) -> None:
    content = b"line one\r\n--not-the-boundary\r\n" * 50
    body = form(("purpose", None, b"batch"), ("file", "b.jsonl", content), ("expires_after", None, b"x"))
    reader, got = read_form(body, chunk)
    assert got == content and reader.file_bytes == len(content)
    assert (reader.fields, reader.filename) == ({"purpose": "batch", "expires_after": "x"}, "b.jsonl")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (form(("file", "a", b"1"), ("file", "b", b"2")), "two 'file' parts"),
        (form(("purpose", None, b"a"), ("purpose", None, b"b"), ("file", "a", b"")), "given twice"),
        (form(("file", "a", b"1"), close=False), "closing boundary"),
        (form(("purpose", None, b"batch")), "no 'file' part"),
        (form(("purpose", None, b"x" * 70_000), ("file", "a", b"")), "longer than"),
    ],
)
def test_a_malformed_form_is_refused(body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        read_form(body, 1024)


def test_only_a_form_with_a_boundary_is_read() -> None:
    assert boundary_of(f"multipart/form-data; boundary={BOUNDARY}") == BOUNDARY.encode()
    assert boundary_of("application/json") is None
    assert boundary_of("multipart/form-data") is None
    assert boundary_of("multipart/form-data; boundary=" + "x" * 71) is None


def line(model: str, max_tokens: int, url: str = "/v1/chat/completions") -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": max_tokens,
    }
    return orjson.dumps({"custom_id": "c", "method": "POST", "url": url, "body": body})


@pytest.mark.parametrize("chunk", [1, 5, 100, 10**6])
def test_a_batch_file_is_read_the_same_in_any_chunks(chunk: int) -> None:
    data = b"\n".join([line("gpt-4o", 10), b"", line("gpt-4o", 20), line("gpt-4o-mini", 5)]) + b"\r\n\n"
    data += line("text-embedding-3-small", 0, "/v1/embeddings").replace(b"max_tokens", b"dimensions")
    reader = BatchInputReader(default_output_tokens=4096, unseen_input_tokens=0)
    for i in range(0, len(data), chunk):
        reader.feed(data[i : i + chunk])
    read = reader.end()
    assert (read.lines, read.unreadable) == (4, 0)
    assert read.endpoints == {"/v1/chat/completions", "/v1/embeddings"}
    assert {m: (v.lines, v.output_tokens) for m, v in read.models.items()} == {
        "gpt-4o": (2, 30),
        "gpt-4o-mini": (1, 5),
        "text-embedding-3-small": (1, 0),
    }
    assert batch_input.BatchInput.from_json(read.to_json()) == read


def test_lines_that_are_not_requests_are_counted_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 200)
    long_line = line("gpt-4o", 1).replace(b"Hello there", b"x" * 300)
    data = b"\n".join(
        [
            b"{not json",
            b"[1, 2]",
            line("gpt-4o", 1, "/v1/images/generations"),
            line("", 1),
            long_line,
            line("gpt-4o", 7),
        ]
    )
    reader = BatchInputReader(default_output_tokens=4096, unseen_input_tokens=0)
    reader.feed(data)
    read = reader.end()
    assert (read.lines, read.unreadable) == (6, 5)
    assert {m: v.output_tokens for m, v in read.models.items()} == {"gpt-4o": 7}
