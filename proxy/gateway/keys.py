"""Virtual keys: ``tm_`` + 40 url-safe random characters.

Only a SHA-256 of the key is stored (the key has 240 bits of entropy, so a
slow hash would add nothing), with a display prefix that is also the lookup
handle. Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["KEY_PREFIX", "generate_key", "hash_key", "key_prefix", "matches"]

KEY_PREFIX = "tm_"
_PREFIX_CHARS = 12  # "tm_" + 9 characters: unique enough to look up, useless to guess with


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def key_prefix(key: str) -> str:
    return key[:_PREFIX_CHARS]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)


def looks_like_key(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and len(key) >= len(KEY_PREFIX) + 32
