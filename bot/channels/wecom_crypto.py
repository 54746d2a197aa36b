"""WeCom (企业微信) self-built-app callback crypto: signatures, the AES envelope and message XML.

Pure code over strings and bytes: no network, no clock, no logging. The HTTP edge URL-decodes the
query (aiohttp's ``request.query`` already does), calls `WeComCrypto.verify_url` for the GET
handshake and `WeComCrypto.decrypt_message` for each POST, and may answer with
`WeComCrypto.encrypt_reply`. Replay windows and de-duplication (by ``MsgId``) belong to the edge.

Wire format (developer.work.weixin.qq.com/document/path/91144, the "WXBizMsgCrypt" scheme):

- ``msg_signature = sha1_hex("".join(sorted([token, timestamp, nonce, encrypted])))``
- ``key = b64decode(EncodingAESKey + "=")`` (32 bytes); AES-256-CBC with ``IV = key[:16]``
- plaintext = ``random16 | len(msg) as 4 bytes big-endian | msg (UTF-8) | receive_id``, padded
  with PKCS#7 to a multiple of **32** bytes (so a pad byte is 1..32, not 1..16)

Errors, one tree; none of the messages contains the token, the key or a decrypted message:

    WeComCryptoError        base of everything below
    ├── SignatureError      msg_signature does not match: reject the request (HTTP 403)
    ├── DecryptError        not a valid envelope: bad base64, length, padding, length field, UTF-8
    │   └── ReceiveIdError  a valid envelope addressed to another corp / app
    └── MalformedMessage    XML is unparseable, has a DTD or entities, or lacks a required field

Bad arguments from our own side (a malformed EncodingAESKey, a wrong ``random16``) raise
`ValueError`: they are programming or configuration errors, not hostile input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as safe_et
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "DecryptError",
    "MalformedMessage",
    "ReceiveIdError",
    "SignatureError",
    "WeComCrypto",
    "WeComCryptoError",
    "WeComMessage",
    "parse_message",
    "sha1_signature",
    "text_reply_xml",
    "xml_text",
]

_BLOCK = 32  # the WeChat family pads to 32 bytes, twice the AES block
_RANDOM_LEN = 16
_LENGTH = struct.Struct(">I")
_HEADER_LEN = _RANDOM_LEN + _LENGTH.size
_KEY_PATTERN = re.compile(r"[A-Za-z0-9+/]{43}")
_DIGITS = re.compile(r"[0-9]+")
# Characters XML 1.0 cannot carry anywhere, CDATA included: everything outside its `Char`
# production (#x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]), which
# also takes in lone surrogates (a Python str can hold them; UTF-8 cannot).
_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class WeComCryptoError(Exception):
    """Base of every error raised on hostile or broken callback input."""


class SignatureError(WeComCryptoError):
    """``msg_signature`` does not match the token, timestamp, nonce and ciphertext."""


class DecryptError(WeComCryptoError):
    """The ciphertext does not decrypt to a well-formed envelope."""


class ReceiveIdError(DecryptError):
    """The envelope decrypted cleanly but names a receive id (CorpID) other than ours."""


class MalformedMessage(WeComCryptoError):
    """The outer or inner XML is unusable: syntax, DTD/entities, or a missing field."""


@dataclass(frozen=True, slots=True)
class WeComMessage:
    """One decrypted callback: a message (``msg_id`` set) or an event (``event`` set).

    ``to_user`` is the CorpID, ``from_user`` the member's UserID. ``msg_id`` is a 64-bit integer
    kept as its decimal string; it is None for events. Optional fields are None when absent and
    ``""`` when present but empty.
    """

    to_user: str
    from_user: str
    create_time: int
    msg_type: str
    content: str | None
    msg_id: str | None
    event: str | None
    agent_id: str | None


def sha1_signature(*parts: str) -> str:
    """WeChat-family signature: SHA-1 of the sorted, concatenated parts, lowercase hex."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


class WeComCrypto:
    """Signs, verifies, encrypts and decrypts WeCom callbacks for one app.

    ``receive_id`` is the CorpID for a self-built app (the suite id for a third-party app, ``""``
    for the 智能机器人 webhook). The key must be the 43-character EncodingAESKey from the admin
    console; anything else raises ValueError, as does an empty token.
    """

    __slots__ = ("_key", "_receive_id", "_token")

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        if not token:
            raise ValueError("WeCom token must not be empty")
        self._token = token
        self._key = _aes_key(encoding_aes_key)
        self._receive_id = receive_id

    def __repr__(self) -> str:
        return f"WeComCrypto(receive_id={self._receive_id!r}, token=***, encoding_aes_key=***)"

    @property
    def receive_id(self) -> str:
        """The CorpID (or suite id) that every envelope must name and every reply carries."""
        return self._receive_id

    # -- signatures

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        """Return the ``msg_signature`` WeCom computes for these query values and ciphertext."""
        return sha1_signature(self._token, timestamp, nonce, encrypted)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> None:
        """Return if ``msg_signature`` matches (constant time); raise SignatureError otherwise."""
        expected = self.signature(timestamp, nonce, encrypted).encode("ascii")
        if not hmac.compare_digest(expected, msg_signature.encode("utf-8")):
            raise SignatureError("msg_signature does not match")

    # -- the AES envelope

    def decrypt(self, encrypted_b64: str) -> str:
        """Return the message inside a base64 envelope addressed to our receive id.

        Raises DecryptError for anything that is not a well-formed envelope and ReceiveIdError
        when it is addressed elsewhere. Call `verify` first: an unauthenticated ciphertext must
        never reach this method, so its distinct errors cannot serve as a padding oracle.
        """
        plain = _unpad(_aes_decrypt(self._key, _b64decode(encrypted_b64)))
        message, receive_id = _split_envelope(plain)
        if receive_id != self._receive_id:
            raise ReceiveIdError(f"envelope is addressed to {receive_id!r}, not to this app")
        return message

    def encrypt(self, plaintext: str, *, random16: bytes | None = None) -> str:
        """Return the base64 envelope of ``plaintext`` for our receive id.

        ``random16`` fixes the 16 leading random bytes (tests only); by default they come from
        `os.urandom`. Raises ValueError if it is not exactly 16 bytes.
        """
        prefix = os.urandom(_RANDOM_LEN) if random16 is None else random16
        if len(prefix) != _RANDOM_LEN:
            raise ValueError(f"random16 must be {_RANDOM_LEN} bytes, got {len(prefix)}")
        message = plaintext.encode("utf-8")
        plain = prefix + _LENGTH.pack(len(message)) + message + self._receive_id.encode("utf-8")
        return base64.b64encode(_aes_encrypt(self._key, _pad(plain))).decode("ascii")

    # -- callbacks

    def verify_url(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Check the GET handshake and return the plaintext to echo as the bare response body.

        ``echostr`` must already be URL-decoded. Raises SignatureError or DecryptError.
        """
        self.verify(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def decrypt_message(
        self, msg_signature: str, timestamp: str, nonce: str, body: bytes
    ) -> WeComMessage:
        """Verify and decrypt a POST body ``<xml><ToUserName/><Encrypt/><AgentID/></xml>``.

        Raises MalformedMessage (outer or inner XML), SignatureError, DecryptError.
        """
        outer = _parse_xml(body)
        encrypted = _child_text(outer, "Encrypt")
        if not encrypted:
            raise MalformedMessage("callback body has no Encrypt element")
        self.verify(msg_signature, timestamp, nonce, encrypted)
        inner = _parse_xml(self.decrypt(encrypted).encode("utf-8"))
        return _message_from_xml(inner, fallback_agent_id=_child_text(outer, "AgentID"))

    def encrypt_reply(
        self,
        to_user: str,
        content: str,
        *,
        timestamp: str,
        nonce: str,
        create_time: int,
        random16: bytes | None = None,
        from_user: str | None = None,
    ) -> str:
        """Return the encrypted passive-reply XML carrying a text message to ``to_user``.

        ``from_user`` is the sender the reply names: the receive id by default (WeCom's CorpID);
        a WeChat Official Account names its original id (``gh_…``) instead.

        Characters XML cannot carry in ``content`` or ``to_user`` (U+FFFF, U+FFFE, control
        characters other than tab and line breaks, lone surrogates) become U+FFFD (`xml_text`),
        so the reply is always well-formed: one odd character in a student's name must not
        break every answer that mentions it. ``timestamp`` must be decimal digits (it is
        written outside CDATA) and ``nonce`` XML text: ValueError otherwise (ours to get right,
        as they are signed).
        """
        if not _DIGITS.fullmatch(timestamp):
            raise ValueError("timestamp must be decimal digits")
        inner = text_reply_xml(from_user or self._receive_id, to_user, content, create_time)
        encrypted = self.encrypt(inner, random16=random16)
        return (
            f"<xml><Encrypt>{_cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{_cdata(self.signature(timestamp, nonce, encrypted))}</MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp>"
            f"<Nonce>{_cdata(nonce)}</Nonce></xml>"
        )


# -- key and cipher


def _aes_key(encoding_aes_key: str) -> bytes:
    """Decode the 43-character EncodingAESKey into the 32-byte AES key, or raise ValueError."""
    if not _KEY_PATTERN.fullmatch(encoding_aes_key):
        raise ValueError("EncodingAESKey must be 43 characters of [A-Za-z0-9+/]")
    return base64.b64decode(encoding_aes_key + "=")


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def _aes_encrypt(key: bytes, plain: bytes) -> bytes:
    encryptor = _cipher(key).encryptor()
    return encryptor.update(plain) + encryptor.finalize()


def _aes_decrypt(key: bytes, raw: bytes) -> bytes:
    """Decrypt whole 32-byte blocks; raise DecryptError for any other length."""
    if not raw or len(raw) % _BLOCK:
        raise DecryptError(f"ciphertext length {len(raw)} is not a positive multiple of {_BLOCK}")
    decryptor = _cipher(key).decryptor()
    return decryptor.update(raw) + decryptor.finalize()


def _b64decode(text: str) -> bytes:
    """Strict base64 (a ``+`` turned into a space by careless URL decoding fails here)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecryptError("ciphertext is not valid base64") from exc


# -- PKCS#7 with a 32-byte block and the envelope layout


def _pad(data: bytes) -> bytes:
    count = _BLOCK - len(data) % _BLOCK
    return data + bytes([count]) * count


def _unpad(data: bytes) -> bytes:
    """Strip PKCS#7 padding of 1..32 identical bytes, or raise DecryptError."""
    count = data[-1]
    if not 1 <= count <= _BLOCK or data[-count:] != bytes([count]) * count:
        raise DecryptError("bad PKCS#7 padding")
    return data[:-count]


def _split_envelope(plain: bytes) -> tuple[str, str]:
    """Split ``random16 | length | message | receive_id`` into (message, receive_id)."""
    if len(plain) < _HEADER_LEN:
        raise DecryptError("envelope is shorter than its header")
    (length,) = _LENGTH.unpack_from(plain, _RANDOM_LEN)
    end = _HEADER_LEN + length
    if end > len(plain):
        raise DecryptError("length field points past the end of the envelope")
    try:
        return plain[_HEADER_LEN:end].decode("utf-8"), plain[end:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptError("envelope is not UTF-8") from exc


# -- XML in


def parse_message(body: bytes) -> WeComMessage:
    """Parse a clear (unencrypted) message XML, as a WeChat Official Account in plain mode
    sends it; raises MalformedMessage."""
    return _message_from_xml(_parse_xml(body), fallback_agent_id=None)


def _parse_xml(data: bytes) -> Element:
    """Parse untrusted XML rooted at ``<xml>``; any DTD, entity or syntax error is malformed."""
    try:
        root: Element = safe_et.fromstring(data, forbid_dtd=True)
    except (defusedxml.DefusedXmlException, ParseError, LookupError, ValueError) as exc:
        # LookupError / ValueError: an unknown or unusable encoding in the XML declaration
        raise MalformedMessage(f"unusable XML: {type(exc).__name__}") from exc
    if root.tag != "xml":
        raise MalformedMessage(f"root element is <{root.tag}>, expected <xml>")
    return root


def _child_text(root: Element, tag: str) -> str | None:
    """Text of the direct child ``tag``: None if absent, ``""`` if empty."""
    child = root.find(tag)
    return None if child is None else (child.text or "")


def _required_text(root: Element, tag: str) -> str:
    text = _child_text(root, tag)
    if not text:
        raise MalformedMessage(f"message has no {tag}")
    return text


def _message_from_xml(root: Element, *, fallback_agent_id: str | None) -> WeComMessage:
    """Build a WeComMessage from the decrypted XML; the outer AgentID fills in a missing one."""
    create_time = _required_text(root, "CreateTime").strip()
    if not _DIGITS.fullmatch(create_time):
        raise MalformedMessage("CreateTime is not a whole number")
    agent_id = _child_text(root, "AgentID")
    return WeComMessage(
        to_user=_required_text(root, "ToUserName"),
        from_user=_required_text(root, "FromUserName"),
        create_time=int(create_time),
        msg_type=_required_text(root, "MsgType"),
        content=_child_text(root, "Content"),
        msg_id=_child_text(root, "MsgId"),
        event=_child_text(root, "Event"),
        agent_id=agent_id if agent_id is not None else fallback_agent_id,
    )


# -- XML out


def xml_text(text: str) -> str:
    """``text`` with every character XML 1.0 cannot carry replaced by U+FFFD."""
    return _XML_FORBIDDEN.sub("\ufffd", text)


def _cdata(text: str) -> str:
    """Wrap text in CDATA; a ``]]>`` inside is split across two sections so it survives."""
    if _XML_FORBIDDEN.search(text):
        raise ValueError("text contains a control character XML cannot carry")
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply_xml(from_user: str, to_user: str, content: str, create_time: int) -> str:
    """The clear passive-reply XML of a text message (what XML cannot carry becomes U+FFFD)."""
    to_user, content = xml_text(to_user), xml_text(content)
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName>"
        f"<FromUserName>{_cdata(xml_text(from_user))}</FromUserName>"
        f"<CreateTime>{int(create_time)}</CreateTime>"
        f"<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{_cdata(content)}</Content></xml>"
    )
