"""Sans-IO MQTT 3.1 / 3.1.1 / 5.0 codec: ``Decoder.feed(bytes) -> packets`` and
``encode(packet, protocol_level) -> bytes``.  Pure Python, no Twisted."""
from vmqtw.codec.decoder import Decoder
from vmqtw.codec.encoder import encode, encode_publish, encode_string, encode_varint
from vmqtw.codec.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError,
    UnsupportedProtocolVersion,
)
from vmqtw.codec.packets import (
    AUTH, CONNACK, CONNECT, DISCONNECT, MQTT5, MQTT31, MQTT311, PINGREQ, PINGRESP,
    PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK,
    UNSUBSCRIBE, Auth, Connack, Connect, Disconnect, Packet, Pingreq, Pingresp,
    Puback, Pubcomp, Publish, Pubrec, Pubrel, SubOptions, Suback, Subscribe,
    Unsuback, Unsubscribe, Will,
)
from vmqtw.codec.properties import PROPERTY_NAMES

__all__ = [
    "Decoder", "encode", "encode_publish", "encode_string", "encode_varint",
    "CodecError", "MalformedPacket", "PacketTooLarge", "ProtocolError",
    "UnsupportedProtocolVersion",
    "AUTH", "CONNACK", "CONNECT", "DISCONNECT", "MQTT5", "MQTT31", "MQTT311",
    "PINGREQ", "PINGRESP", "PUBACK", "PUBCOMP", "PUBLISH", "PUBREC", "PUBREL",
    "SUBACK", "SUBSCRIBE", "UNSUBACK", "UNSUBSCRIBE",
    "Auth", "Connack", "Connect", "Disconnect", "Packet", "Pingreq", "Pingresp",
    "Puback", "Pubcomp", "Publish", "Pubrec", "Pubrel", "SubOptions", "Suback",
    "Subscribe", "Unsuback", "Unsubscribe", "Will", "PROPERTY_NAMES",
]
