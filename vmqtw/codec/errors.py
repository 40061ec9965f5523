"""Typed codec errors.  Every decoding failure raises a subclass of CodecError.

``reason_code`` is the MQTT 5.0 reason code to put in a DISCONNECT (or CONNACK
for a broken CONNECT) when the peer speaks 5.0; MQTT 3.x peers are simply
disconnected.
"""
from __future__ import annotations

from vmqtw.codec import reasons


class CodecError(Exception):
    reason_code: int = reasons.MALFORMED_PACKET

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(CodecError):
    """The bytes do not form a valid packet (bad lengths, bad UTF-8, bad flags...)."""

    reason_code = reasons.MALFORMED_PACKET


class ProtocolError(CodecError):
    """Well-formed bytes that break a protocol rule (e.g. duplicate property)."""

    reason_code = reasons.PROTOCOL_ERROR


class PacketTooLarge(CodecError):
    """The remaining length announced exceeds the decoder's maximum packet size."""

    reason_code = reasons.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(CodecError):
    """A CONNECT with an unknown protocol name/level.  The broker answers CONNACK
    0x01 (3.x) / 0x84 (5.0) before closing."""

    reason_code = reasons.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, message: str, protocol_level: int = 4) -> None:
        super().__init__(message)
        self.protocol_level = protocol_level
