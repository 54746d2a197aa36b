"""One-time console sign-in links: the token's shape, its hash and its lifetime.

A token is 32 random bytes (256 bits) in URL-safe base64. Only its SHA-256 is stored, so a copy of
the database cannot be used to sign in; the link is valid for `TOKEN_TTL` and only once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

TOKEN_TTL = timedelta(minutes=15)
LOGIN_PATH = "/console/login"


def new_secret() -> str:
    """A fresh random value (256 bits), URL-safe: sign-in tokens, session ids, CSRF tokens."""
    return secrets.token_urlsafe(32)


def secret_hash(value: str) -> str:
    """What the database keeps of a token or a session id (hex SHA-256)."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def login_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}{LOGIN_PATH}?token={token}"
