"""Feishu (飞书) event crypto: the Encrypt Key envelope and the `X-Lark-Signature` header.

PROTOCOLS.md 4.1, as the official SDKs do it (lark-oapi `AESCipher`, `_verify_sign`):

- decryption: ``key = sha256(encrypt_key)``; ``raw = b64decode(encrypt)``; ``iv = raw[:16]``;
  AES-256-CBC over ``raw[16:]``; PKCS#7 with 16-byte blocks; the result is UTF-8 JSON;
- signature: ``sha256_hex(timestamp + nonce + encrypt_key + raw body bytes)``, compared in
  constant time over the exact bytes received.

`encrypt` is the inverse, for the tests' fake Feishu and for nothing in production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


class DecryptError(ValueError):
    """The `encrypt` field is not a ciphertext under our key (bad base64, length or padding)."""


def _cipher(encrypt_key: str, iv: bytes) -> Cipher[modes.CBC]:
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def decrypt(encrypt_key: str, encrypt: str) -> str:
    """The plaintext of an `{"encrypt": ...}` body; DecryptError when it is not one of ours."""
    try:
        raw = base64.b64decode(encrypt, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptError("not base64") from exc
    if len(raw) < 2 * BLOCK or len(raw) % BLOCK:
        raise DecryptError("wrong length")
    decryptor = _cipher(encrypt_key, raw[:BLOCK]).decryptor()
    padded = decryptor.update(raw[BLOCK:]) + decryptor.finalize()
    pad = padded[-1]
    if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise DecryptError("bad padding")
    try:
        return padded[:-pad].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptError("not UTF-8") from exc


def encrypt(encrypt_key: str, plaintext: str, iv: bytes | None = None) -> str:
    """What Feishu sends as `encrypt` for `plaintext` (a random IV unless one is given)."""
    iv = iv or os.urandom(BLOCK)
    data = plaintext.encode("utf-8")
    pad = BLOCK - len(data) % BLOCK
    encryptor = _cipher(encrypt_key, iv).encryptor()
    body = encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()
    return base64.b64encode(iv + body).decode("ascii")


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """The `X-Lark-Signature` Feishu computes for a request body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


def signature_ok(timestamp: str, nonce: str, encrypt_key: str, body: bytes, given: str) -> bool:
    expected = signature(timestamp, nonce, encrypt_key, body)
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))
