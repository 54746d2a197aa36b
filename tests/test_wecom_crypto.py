"""WeCom callback crypto: published vectors, wechatpy as an independent peer, hostile input.

The vectors live in ``tests/vectors/vectors.json``, a copy of the project's verified protocol
vectors kept in the repository so a plain clone runs them. A missing file fails the run: silently
skipping would hide the only published ground truth.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any, NoReturn
from xml.etree import ElementTree  # only for XML this file builds itself or wechatpy returns

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from bot.channels.wecom_crypto import (
    DecryptError,
    MalformedMessage,
    ReceiveIdError,
    SignatureError,
    WeComCrypto,
    WeComCryptoError,
    WeComMessage,
    sha1_signature,
)

try:  # wechatpy >= 2 names the WeCom package `work`; 1.8.x (pinned in the venv) `enterprise`
    from wechatpy.work import crypto as peer
except ImportError:
    from wechatpy.enterprise import crypto as peer

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "vectors.json"
WX_KINDS = {"wx_decrypt", "wx_encrypt", "wx_sha1_sorted"}

# The official example (doc 91144), self-contained so the hostile-input tests need no JSON.
TOKEN = "QDG6eK"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CORP_ID = "wx5823bf96d3bd56c7"
GET_TS, GET_NONCE = "1409659589", "263014780"
GET_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
ECHO_PLAINTEXT = "1616140317555161061"
TS, NONCE = "1700000000", "n0nce"


# -- helpers


def _load_vectors() -> list[dict[str, Any]] | None:
    if not VECTORS_PATH.is_file():
        return None
    vectors: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text("utf-8"))["vectors"]
    return vectors


VECTORS = _load_vectors()


def _cases(kind: str) -> list[Any]:
    """One pytest param per vector of ``kind``; a single failing param if the file is missing."""
    if VECTORS is None:
        return [pytest.param(None, id="vectors-json-missing")]
    return [pytest.param(v, id=v["id"]) for v in VECTORS if v["kind"] == kind]


def _fail_missing() -> NoReturn:
    pytest.fail(
        f"{VECTORS_PATH} is missing: it belongs to the repository "
        "(the vectors are the only published ground truth)"
    )


def _all_vectors() -> list[dict[str, Any]]:
    if VECTORS is None:
        _fail_missing()
    return VECTORS


def _require(vector: dict[str, Any] | None) -> dict[str, Any]:
    """The parametrized vector; None is the stand-in used when the file is missing."""
    if vector is None:
        _fail_missing()
    return vector


def _ours(receive_id: str = CORP_ID) -> WeComCrypto:
    return WeComCrypto(TOKEN, AES_KEY, receive_id)


def _peer() -> Any:
    return peer.WeChatCrypto(TOKEN, AES_KEY, CORP_ID)


def _seal(raw: bytes) -> str:
    """AES-256-CBC-encrypt already-padded bytes with the test key, as a sender with bugs would."""
    key = base64.b64decode(AES_KEY + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(raw) + encryptor.finalize()).decode("ascii")


def _open_raw(encoding_aes_key: str, ciphertext: str) -> bytes:
    """Decrypt without unpadding, to look at the padding a vector really uses."""
    key = base64.b64decode(encoding_aes_key + "=")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return decryptor.update(base64.b64decode(ciphertext)) + decryptor.finalize()


def _envelope(message: bytes, receive_id: bytes = CORP_ID.encode()) -> bytes:
    return b"R" * 16 + struct.pack(">I", len(message)) + message + receive_id


def _fill_to_block(body: bytes, filler: int, last: int) -> bytes:
    """Pad ``body`` to a multiple of 32 with ``filler`` bytes and a chosen final byte."""
    count = 32 - len(body) % 32
    return body + bytes([filler]) * (count - 1) + bytes([last])


def _signed_body(crypto: WeComCrypto, encrypted: str) -> tuple[str, bytes]:
    """A POST body shaped like WeCom's, and the signature WeCom would send with it."""
    body = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt>"
        "<AgentID><![CDATA[218]]></AgentID></xml>"
    )
    return crypto.signature(TS, NONCE, encrypted), body.encode("utf-8")


def _peer_sends(plaintext: str) -> tuple[str, bytes]:
    """wechatpy encrypts and signs ``plaintext`` the way WeCom's servers do."""
    envelope = ElementTree.fromstring(_peer().encrypt_message(plaintext, NONCE, TS))
    encrypted, signature = envelope.findtext("Encrypt"), envelope.findtext("MsgSignature")
    assert encrypted and signature
    body = f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]>"
    return signature, (body + "</Encrypt><AgentID><![CDATA[218]]></AgentID></xml>").encode()


def _signature_in(reply_xml: str) -> str:
    signature = ElementTree.fromstring(reply_xml).findtext("MsgSignature")
    assert signature
    return signature


# -- published vectors


def test_the_vectors_are_part_of_the_repository() -> None:
    """A plain clone must run every vector: nothing may be read from outside the repository."""
    repo = Path(__file__).resolve().parents[1]
    assert VECTORS_PATH.is_relative_to(repo) and VECTORS_PATH.is_file()
    outside = "/".join(["..", "shared"])  # spelled so that this file does not match itself
    for test_file in Path(__file__).parent.glob("*.py"):
        assert outside not in test_file.read_text("utf-8"), test_file.name


def test_every_wecom_vector_is_exercised() -> None:
    wecom = [v for v in _all_vectors() if v["platform"] == "wecom"]

    assert len(wecom) >= 8, "vectors.json lost WeCom vectors"
    assert [v["id"] for v in wecom if v["kind"] not in WX_KINDS] == []


@pytest.mark.parametrize("vector", _cases("wx_decrypt"))
def test_decrypt_vector(vector: dict[str, Any] | None) -> None:
    v = _require(vector)
    i, e = v["inputs"], v["expected"]
    crypto = WeComCrypto(i["token"], i["encoding_aes_key"], e["receive_id"])

    assert crypto.signature(i["timestamp"], i["nonce"], i["ciphertext"]) == e["msg_signature"]
    plaintext = crypto.verify_url(e["msg_signature"], i["timestamp"], i["nonce"], i["ciphertext"])

    assert plaintext == e.get("plaintext", plaintext)
    assert all(needle in plaintext for needle in e.get("contains", []))
    if "pkcs7_pad_len" in e:
        assert _open_raw(i["encoding_aes_key"], i["ciphertext"])[-1] == e["pkcs7_pad_len"]


@pytest.mark.parametrize("vector", _cases("wx_encrypt"))
def test_encrypt_vector(vector: dict[str, Any] | None) -> None:
    v = _require(vector)
    i, e = v["inputs"], v["expected"]
    crypto = WeComCrypto(i.get("token", "unused"), i["encoding_aes_key"], i["receive_id"])

    encrypted = crypto.encrypt(i["plaintext"], random16=i["random16"].encode("ascii"))

    assert encrypted == e["ciphertext"]
    if "msg_signature" in e:
        assert crypto.signature(i["timestamp"], i["nonce"], encrypted) == e["msg_signature"]
    assert crypto.decrypt(encrypted) == i["plaintext"]


@pytest.mark.parametrize("vector", _cases("wx_sha1_sorted"))
def test_sha1_vector(vector: dict[str, Any] | None) -> None:
    v = _require(vector)
    assert sha1_signature(*v["inputs"]["parts"]) == v["expected"]["signature"]


def test_doc_handshake_echoes_the_plaintext() -> None:
    assert _ours().verify_url(GET_SIGNATURE, GET_TS, GET_NONCE, ECHOSTR) == ECHO_PLAINTEXT


@pytest.mark.parametrize(
    ("vector_id", "expected"),
    [
        pytest.param(
            "wecom_doc_decrypt_text_msg",
            WeComMessage(
                to_user="wx5823bf96d3bd56c7",
                from_user="mycreate",
                create_time=1409659813,
                msg_type="text",
                content="hello",
                msg_id="4561255354251345929",
                event=None,
                agent_id="218",
            ),
            id="doc-cdata",
        ),
        pytest.param(
            "wecom_sbzhu_decrypt_xml",
            WeComMessage(
                to_user="ww1436e0e65a779aee",
                from_user="ChenJiaShun",
                create_time=1476422779,
                msg_type="text",
                content="你好",
                msg_id="1456453720",
                event=None,
                agent_id="1000002",
            ),
            id="sbzhu-plain-text",
        ),
    ],
)
def test_vector_post_body_becomes_a_message(vector_id: str, expected: WeComMessage) -> None:
    vectors = {v["id"]: v for v in _all_vectors()}
    i, e = vectors[vector_id]["inputs"], vectors[vector_id]["expected"]
    crypto = WeComCrypto(i["token"], i["encoding_aes_key"], e["receive_id"])
    body = f"<xml><ToUserName><![CDATA[{e['receive_id']}]]></ToUserName><Encrypt><![CDATA["
    body += f"{i['ciphertext']}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>"

    message = crypto.decrypt_message(e["msg_signature"], i["timestamp"], i["nonce"], body.encode())

    assert message == expected


# -- wechatpy as the other end of the wire


def test_text_message_from_peer_decrypts() -> None:
    inner = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        "<FromUserName><![CDATA[zhang.laoshi]]></FromUserName><CreateTime>1700000000</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[家访完成 & <好>]]></Content>"
        "<MsgId>18446744073709551615</MsgId><AgentID>1000002</AgentID></xml>"
    )
    signature, body = _peer_sends(inner)

    message = _ours().decrypt_message(signature, TS, NONCE, body)

    assert message == WeComMessage(
        to_user=CORP_ID,
        from_user="zhang.laoshi",
        create_time=1700000000,
        msg_type="text",
        content="家访完成 & <好>",
        msg_id="18446744073709551615",
        event=None,
        agent_id="1000002",
    )


def test_event_from_peer_decrypts_and_takes_the_outer_agent_id() -> None:
    inner = (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>"
        "<FromUserName><![CDATA[li.laoshi]]></FromUserName><CreateTime>1700000001</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[enter_agent]]></Event></xml>"
    )
    signature, body = _peer_sends(inner)

    message = _ours().decrypt_message(signature, TS, NONCE, body)

    assert (message.msg_type, message.event, message.msg_id, message.content) == (
        "event",
        "enter_agent",
        None,
        None,
    )
    assert message.agent_id == "218"


def test_handshake_from_peer_echoes_the_plaintext() -> None:
    signature, body = _peer_sends("5927782489442352469")
    echostr = ElementTree.fromstring(body).findtext("Encrypt")
    assert echostr

    assert _ours().verify_url(signature, TS, NONCE, echostr) == "5927782489442352469"


def test_our_echostr_passes_peer_check() -> None:
    echostr = _ours().encrypt("8317409162405937")
    signature = _ours().signature(TS, NONCE, echostr)

    assert _peer().check_signature(signature, TS, NONCE, echostr) == "8317409162405937"


def test_our_reply_decrypts_with_peer() -> None:
    content = "请填写家访记录 ]]> 第2步 & <确认>\n谢谢"
    reply = _ours().encrypt_reply(
        "zhang.laoshi", content, timestamp=TS, nonce=NONCE, create_time=1700000002
    )

    inner = ElementTree.fromstring(_peer().decrypt_message(reply, _signature_in(reply), TS, NONCE))

    assert [child.tag for child in inner] == [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Content",
    ]
    assert inner.findtext("ToUserName") == "zhang.laoshi"
    assert inner.findtext("FromUserName") == CORP_ID
    assert inner.findtext("CreateTime") == "1700000002"
    assert inner.findtext("MsgType") == "text"
    assert inner.findtext("Content") == content


def test_envelopes_agree_with_peer_at_every_padding_length() -> None:
    """Lengths 0..69 walk the pad byte through 1..32 in both directions."""
    ours, theirs = _ours(), peer.PrpCrypto(base64.b64decode(AES_KEY + "="))
    for length in range(70):
        text = "家" * (length % 3) + "x" * length
        assert theirs.decrypt(ours.encrypt(text), CORP_ID) == text
        from_peer = theirs.encrypt(text, CORP_ID)
        assert (
            ours.decrypt(from_peer.decode() if isinstance(from_peer, bytes) else from_peer) == text
        )


# -- signatures


@pytest.mark.parametrize(
    ("signature", "timestamp", "nonce"),
    [
        pytest.param("0" * 40, GET_TS, GET_NONCE, id="wrong-signature"),
        pytest.param(GET_SIGNATURE.upper(), GET_TS, GET_NONCE, id="uppercase-signature"),
        pytest.param(GET_SIGNATURE, GET_TS, "263014781", id="tampered-nonce"),
        pytest.param(GET_SIGNATURE, "1409659590", GET_NONCE, id="tampered-timestamp"),
        pytest.param("签名" * 20, GET_TS, GET_NONCE, id="non-ascii-signature"),
        pytest.param("", GET_TS, GET_NONCE, id="empty-signature"),
    ],
)
def test_bad_signature_is_rejected(signature: str, timestamp: str, nonce: str) -> None:
    with pytest.raises(SignatureError):
        _ours().verify_url(signature, timestamp, nonce, ECHOSTR)


def test_tampered_nonce_from_wechatpy_tests_is_rejected() -> None:
    crypto = WeComCrypto(
        "123456", "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR", "wx49f0ab532d5d035a"
    )
    echostr = (
        "4ByGGj+sVCYcvGeQYhaKIk1o0pQRNbRjxybjTGblXrBaXlTXeOo1+bXFXDQQb1o6co6Yh9Bv41n7hOchLF6p+Q=="
    )
    signature = "dd6b9c95b495b3f7e2901bfbc76c664930ffdb96"
    crypto.verify(signature, "1411443780", "437374425", echostr)

    with pytest.raises(SignatureError):
        crypto.verify(signature, "1411443780", "437374424", echostr)


def test_wrong_signature_on_a_post_is_rejected_before_decrypting() -> None:
    crypto = _ours()
    _, body = _signed_body(crypto, crypto.encrypt("<xml/>"))

    with pytest.raises(SignatureError):
        crypto.decrypt_message("0" * 40, TS, NONCE, body)


# -- the envelope


def test_envelope_for_another_corp_is_refused() -> None:
    with pytest.raises(ReceiveIdError) as caught:
        _ours(receive_id="ww0000000000000000").verify_url(GET_SIGNATURE, GET_TS, GET_NONCE, ECHOSTR)

    assert isinstance(caught.value, DecryptError)
    assert CORP_ID in str(caught.value)


@pytest.mark.parametrize(
    "encrypted",
    [
        pytest.param("not base64!", id="garbage"),
        pytest.param(ECHOSTR.replace("+", " "), id="plus-decoded-as-space"),
        pytest.param(ECHOSTR.rstrip("="), id="padding-stripped"),
        pytest.param("密文" + ECHOSTR, id="non-ascii"),
    ],
)
def test_invalid_base64_is_a_decrypt_error(encrypted: str) -> None:
    with pytest.raises(DecryptError, match="base64"):
        _ours().decrypt(encrypted)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda raw: raw[:-16], id="half-block-missing"),
        pytest.param(lambda raw: raw[:-1], id="one-byte-missing"),
        pytest.param(lambda raw: raw[:32], id="first-block-only"),
        pytest.param(lambda raw: raw[32:], id="first-block-missing"),
        pytest.param(lambda raw: b"", id="empty"),
    ],
)
def test_truncated_ciphertext_is_a_decrypt_error(cut: Any) -> None:
    crypto = _ours()
    raw = base64.b64decode(crypto.encrypt("家访记录已保存" * 10))

    with pytest.raises(DecryptError):
        crypto.decrypt(base64.b64encode(cut(raw)).decode())


@pytest.mark.parametrize(
    ("filler", "last"),
    [
        pytest.param(0, 0, id="pad-byte-0"),
        pytest.param(33, 33, id="pad-byte-33"),
        pytest.param(0xFF, 0xFF, id="pad-byte-255"),
        pytest.param(7, 8, id="pad-bytes-disagree"),
    ],
)
def test_bad_padding_is_a_decrypt_error(filler: int, last: int) -> None:
    raw = _fill_to_block(_envelope(b"<xml/>"), filler, last)

    with pytest.raises(DecryptError, match="padding"):
        _ours().decrypt(_seal(raw))


def test_full_block_of_padding_is_accepted() -> None:
    body = _envelope(b"x" * (64 - 20 - len(CORP_ID)))
    assert len(body) % 32 == 0

    assert _ours().decrypt(_seal(body + bytes([32]) * 32)) == "x" * (64 - 20 - len(CORP_ID))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b"R" * 16 + struct.pack(">I", 0xFFFFFFFF) + b"hi" + CORP_ID.encode(), id="huge"
        ),
        pytest.param(
            b"R" * 16 + struct.pack(">I", 100) + b"short" + CORP_ID.encode(), id="past-end"
        ),
        pytest.param(b"R" * 16 + b"\x00\x00", id="header-cut"),
    ],
)
def test_length_field_out_of_range_is_a_decrypt_error(body: bytes) -> None:
    """Not a ReceiveIdError from a silently short slice: the length itself is refused."""
    count = 32 - len(body) % 32

    with pytest.raises(DecryptError, match=r"length field|header"):
        _ours().decrypt(_seal(body + bytes([count]) * count))


@pytest.mark.parametrize(
    ("message", "receive_id"),
    [
        pytest.param(b"\xff\xfe<xml/>", CORP_ID.encode(), id="message"),
        pytest.param(b"<xml/>", b"\xc3(", id="receive-id"),
    ],
)
def test_non_utf8_envelope_is_a_decrypt_error(message: bytes, receive_id: bytes) -> None:
    body = _envelope(message, receive_id)
    count = 32 - len(body) % 32

    with pytest.raises(DecryptError, match="UTF-8"):
        _ours().decrypt(_seal(body + bytes([count]) * count))


def test_encryption_is_randomised_by_default() -> None:
    crypto = _ours()
    assert crypto.encrypt("same") != crypto.encrypt("same")


def test_fixed_random_prefix_is_deterministic_and_checked() -> None:
    crypto = _ours()
    assert crypto.encrypt("x", random16=b"0" * 16) == crypto.encrypt("x", random16=b"0" * 16)

    with pytest.raises(ValueError, match="16"):
        crypto.encrypt("x", random16=b"short")


# -- XML


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE xml [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><ToUserName>x</ToUserName><Encrypt>&lol9;</Encrypt><AgentID>1</AgentID></xml>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>x</ToUserName><Encrypt>&xxe;</Encrypt></xml>"""


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(XXE, id="external-entity"),
        pytest.param(b"<xml><Encrypt>abc</Encrypt>", id="unclosed"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"Encrypt": "abc"}', id="json"),
        pytest.param(b"<root><Encrypt>abc</Encrypt></root>", id="wrong-root"),
        pytest.param(b"<xml><ToUserName>x</ToUserName><AgentID>1</AgentID></xml>", id="no-encrypt"),
        pytest.param(b"<xml><Encrypt></Encrypt></xml>", id="empty-encrypt"),
        pytest.param(b"<xml><x><Encrypt>abc</Encrypt></x></xml>", id="nested-encrypt"),
    ],
)
def test_unusable_outer_body_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedMessage):
        _ours().decrypt_message("0" * 40, TS, NONCE, body)


def test_signed_body_with_an_inert_doctype_is_malformed() -> None:
    """WeCom never sends a DTD, so any DOCTYPE is refused, even one declaring nothing."""
    crypto = _ours()
    signature, body = _signed_body(crypto, crypto.encrypt("<xml/>"))

    with pytest.raises(MalformedMessage, match="DTDForbidden"):
        crypto.decrypt_message(signature, TS, NONCE, b"<!DOCTYPE xml>" + body)


@pytest.mark.parametrize(
    "inner",
    [
        pytest.param(BILLION_LAUGHS.decode(), id="billion-laughs"),
        pytest.param("not xml at all", id="not-xml"),
        pytest.param(
            "<xml><ToUserName>c</ToUserName><CreateTime>1</CreateTime>"
            "<MsgType>text</MsgType></xml>",
            id="no-from-user",
        ),
        pytest.param(
            "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName>"
            "<CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>",
            id="create-time-not-a-number",
        ),
        pytest.param(
            "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName>"
            "<CreateTime>1</CreateTime><MsgType></MsgType></xml>",
            id="empty-msg-type",
        ),
    ],
)
def test_unusable_inner_message_is_malformed(inner: str) -> None:
    """Even a correctly signed and encrypted payload is parsed defensively."""
    crypto = _ours()
    signature, body = _signed_body(crypto, crypto.encrypt(inner))

    with pytest.raises(MalformedMessage):
        crypto.decrypt_message(signature, TS, NONCE, body)


@pytest.mark.parametrize(
    "content",
    ["a]]>b", "]]>", "]]>]]>", "x]]", "]]]>>", "<![CDATA[nested]]>", "", "家访 😀 & <tag/>"],
)
def test_reply_content_round_trips(content: str) -> None:
    crypto = _ours()
    reply = crypto.encrypt_reply("zhang.laoshi", content, timestamp=TS, nonce=NONCE, create_time=7)

    message = crypto.decrypt_message(_signature_in(reply), TS, NONCE, reply.encode("utf-8"))

    assert message == WeComMessage(
        to_user="zhang.laoshi",
        from_user=CORP_ID,
        create_time=7,
        msg_type="text",
        content=content,
        msg_id=None,
        event=None,
        agent_id=None,
    )


def test_reply_envelope_has_the_passive_reply_shape() -> None:
    crypto = _ours()
    reply = crypto.encrypt_reply(
        "u]]>1", "hi", timestamp=TS, nonce="n]]>x", create_time=9, random16=b"0" * 16
    )
    root = ElementTree.fromstring(reply)
    encrypted = root.findtext("Encrypt")
    assert encrypted

    assert [child.tag for child in root] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert (root.findtext("TimeStamp"), root.findtext("Nonce")) == (TS, "n]]>x")
    assert root.findtext("MsgSignature") == crypto.signature(TS, "n]]>x", encrypted)
    assert crypto.decrypt(encrypted) == (
        "<xml><ToUserName><![CDATA[u]]]]><![CDATA[>1]]></ToUserName>"
        f"<FromUserName><![CDATA[{CORP_ID}]]></FromUserName><CreateTime>9</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content></xml>"
    )


@pytest.mark.parametrize(
    ("timestamp", "nonce"),
    [
        pytest.param("12<34", NONCE, id="timestamp-markup"),
        pytest.param("", NONCE, id="timestamp-empty"),
        pytest.param(TS, "n\x00", id="nonce-control-character"),
    ],
)
def test_reply_refuses_a_bad_timestamp_or_nonce(timestamp: str, nonce: str) -> None:
    with pytest.raises(ValueError):
        _ours().encrypt_reply("u", "hi", timestamp=timestamp, nonce=nonce, create_time=1)


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        pytest.param("周小禾\uffff", "周小禾\ufffd", id="U+FFFF"),
        pytest.param("a\ufffeb", "a\ufffdb", id="U+FFFE"),
        pytest.param("bell \x07 nul \x00 esc \x1b", "bell \ufffd nul \ufffd esc \ufffd", id="C0"),
        pytest.param("x\udc80y\ud800", "x\ufffdy\ufffd", id="lone-surrogates"),
        pytest.param(
            "tab\tline\ncr\r ok \U0001f600 \ufffd",
            "tab\tline\ncr\r ok \U0001f600 \ufffd",
            id="allowed-as-is",
        ),
    ],
)
def test_reply_replaces_what_xml_cannot_carry_and_peer_can_read_it(
    content: str, shown: str
) -> None:
    reply = _ours().encrypt_reply("u", content, timestamp=TS, nonce=NONCE, create_time=1)
    root = ElementTree.fromstring(reply)
    plain = _peer().decrypt_message(reply, root.findtext("MsgSignature"), TS, NONCE)
    # wechatpy's decrypt reads the XML the way WeCom's client would; CR inside CDATA is
    # normalised to LF by any XML parser, so compare with that in mind
    assert ElementTree.fromstring(plain).findtext("Content") == shown.replace("\r", "\n")


# -- construction and values


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(AES_KEY[:-1], id="42-chars"),
        pytest.param(AES_KEY + "A", id="44-chars"),
        pytest.param(AES_KEY + "=", id="padded"),
        pytest.param(AES_KEY[:-1] + "-", id="url-safe-alphabet"),
        pytest.param(AES_KEY[:-1] + "密", id="non-ascii"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_encoding_aes_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="EncodingAESKey"):
        WeComCrypto(TOKEN, key, CORP_ID)


def test_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="token"):
        WeComCrypto("", AES_KEY, CORP_ID)


def test_repr_hides_the_secrets() -> None:
    text = repr(_ours())
    assert CORP_ID in text
    assert TOKEN not in text
    assert AES_KEY not in text


def test_message_is_a_frozen_value() -> None:
    crypto = _ours()
    reply = crypto.encrypt_reply("u", "hi", timestamp=TS, nonce=NONCE, create_time=1)
    message = crypto.decrypt_message(_signature_in(reply), TS, NONCE, reply.encode())

    with pytest.raises(FrozenInstanceError):
        message.content = "changed"  # type: ignore[misc]


def test_every_error_shares_one_base() -> None:
    for error in (SignatureError, DecryptError, ReceiveIdError, MalformedMessage):
        assert issubclass(error, WeComCryptoError)
    assert not issubclass(SignatureError, DecryptError)
    assert not issubclass(MalformedMessage, DecryptError)


def test_errors_do_not_leak_the_decrypted_message() -> None:
    secret = "王小明 家住 3 栋"
    crypto = _ours()
    signature, body = _signed_body(
        crypto, crypto.encrypt(f"<xml><Content>{secret}</Content></xml>")
    )

    with pytest.raises(MalformedMessage) as caught:
        crypto.decrypt_message(signature, TS, NONCE, body)

    assert secret not in str(caught.value)


@pytest.mark.parametrize("declaration", ['encoding="bogus"', 'encoding="utf-32"'])
def test_an_unusable_xml_encoding_is_malformed(declaration: str) -> None:
    crypto = WeComCrypto(
        "QDG6eK", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "wx5823bf96d3bd56c7"
    )
    body = f'<?xml version="1.0" {declaration}?><xml><Encrypt>x</Encrypt></xml>'.encode()
    with pytest.raises(MalformedMessage):
        crypto.decrypt_message("sig", "1409659813", "nonce", body)
