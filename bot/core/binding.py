"""Binding codes: a coordinator's one-time code that ties a chat identity to a staff member.

A code is 8 characters from an alphabet without look-alikes (no 0/O, 1/I/L), 40 bits: with the
rate limits below a guesser gets a few hundred tries a day, against 10^12 codes. Only its SHA-256
is stored; it is valid for `CODE_TTL` and once. Issuing a new code withdraws the staff member's
unused ones, so only the last code handed out works.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from enum import StrEnum

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_TTL = timedelta(hours=72)
# Wrong codes allowed in `FAILURE_WINDOW`, per sender and per staff number.
FAILURE_WINDOW = timedelta(hours=1)
SENDER_FAILURES = 5
STAFF_FAILURES = 10


class BindOutcome(StrEnum):
    BOUND = "bound"  # the identity now belongs to the staff member
    REPLACED = "replaced"  # ... and replaced their earlier identity on this channel
    ALREADY = "already"  # it already did: nothing changed, the code stays unused
    TAKEN = "taken"  # the identity belongs to someone else: nothing changed
    WRONG = "wrong"  # no such staff number, or no valid code of theirs


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(text: str) -> str:
    """What a teacher types, as issued: upper case, no spaces or dashes."""
    return "".join(text.split()).replace("-", "").upper()


def code_hash(code: str) -> str:
    return hashlib.sha256(normalize_code(code).encode("utf-8", "surrogatepass")).hexdigest()


def sender_subject(channel: str, user_id: str) -> str:
    """The rate-limit subject of a chat identity (a hash: no platform id is stored for it)."""
    digest = hashlib.sha256(f"{channel}\0{user_id}".encode("utf-8", "surrogatepass"))
    return "sender:" + digest.hexdigest()[:40]


def staff_subject(staff_no: str) -> str:
    return "staff:" + staff_no[:64]
