"""Request paths in canonical form, read from the raw request line (pure).

A client's path picks what is forwarded with the operator's key, so it is
matched as sent, before any decoding or normalising could turn it into
another: ``/v1/models/%2e%2e/files`` must not become ``/v1/files`` on the way
upstream. A path is canonical when every segment is non-empty, is not ``.`` or
``..`` in any spelling, and decodes to characters a URL segment may carry
without escaping, with no ``/``, ``\\`` or ``%`` among them (no encoded
slashes, no double encoding). Anything else is refused, never repaired.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["canonical_path", "upstream_path"]

# RFC 3986 unreserved characters and the sub-delimiters, ":" and "@": what a
# path segment may hold. Model ids such as "ft:gpt-4o:org::id" fit.
_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")
_SAFE = "-._~!$&'()*+,;=:@"
MAX_PATH_CHARS = 2048


def canonical_path(raw_target: str) -> str | None:
    """The decoded path of a raw request target (``/v1/x?y``), or None when
    it is not canonical (see the module docstring)."""
    path = raw_target.split("?", 1)[0]
    if not path.startswith("/") or len(path) > MAX_PATH_CHARS:
        return None
    segments = []
    for raw in path[1:].split("/"):
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            return None
        segments.append(segment)
    return "/" + "/".join(segments)


def upstream_path(path: str) -> str:
    """A canonical path as it is sent upstream: each segment quoted again,
    so the upstream reads exactly the segments that were matched here."""
    return "/".join(quote(segment, safe=_SAFE) for segment in path.split("/"))
