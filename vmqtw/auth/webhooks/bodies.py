"""VerneMQ's webhook request bodies, field for field and in VerneMQ's order,
and MQTT 5.0 properties in VerneMQ's ``p_*`` spelling (both directions).

Payloads (and client certificates) are base64 unless the endpoint has
``base64encode = off``; user properties are always base64 (as in VerneMQ);
``p_correlation_data`` is sent raw and ``p_authentication_data`` as base64.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

__all__ = ["b64", "unb64", "properties_out", "properties_in", "listener_type",
           "register_body", "publish_body", "subscribe_body", "client_fields"]

#: Our property name -> VerneMQ's, for properties whose value is passed as is.
_PLAIN = {
    "session_expiry_interval": "p_session_expiry_interval",
    "receive_maximum": "p_receive_max",
    "topic_alias_maximum": "p_topic_alias_max",
    "maximum_packet_size": "p_max_packet_size",
    "message_expiry_interval": "p_message_expiry_interval",
    "content_type": "p_content_type",
    "response_topic": "p_response_topic",
    "authentication_method": "p_authentication_method",
    "will_delay_interval": "p_will_delay_interval",
}
_PLAIN_BACK = {v: k for k, v in _PLAIN.items()}

_LISTENER_TYPES = {"tcp": "mqtt", "ssl": "mqtts", "ws": "mqttws", "wss": "mqttwss"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    """Base64 text from an answer; ValueError when it is not."""
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, got {text!r}")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"not base64: {text[:40]!r}") from None


def _text(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


def payload_field(payload: bytes, base64_payload: bool) -> str:
    return b64(payload) if base64_payload else payload.decode("utf-8", "replace")


def properties_out(props: dict[str, Any]) -> dict[str, Any]:
    """Our MQTT 5.0 properties as VerneMQ sends them to a webhook."""
    out: dict[str, Any] = {}
    for name, value in props.items():
        if name in _PLAIN:
            out[_PLAIN[name]] = value
        elif name == "user_property":
            out["p_user_property"] = [{"key": b64(k.encode()), "val": b64(v.encode())}
                                      for k, v in value]
        elif name == "request_response_information":
            out["p_request_response_info"] = bool(value)
        elif name == "request_problem_information":
            out["p_request_problem_info"] = bool(value)
        elif name == "payload_format_indicator":
            out["p_payload_format_indicator"] = "utf8" if value == 1 else "undefined"
        elif name == "correlation_data":
            out["p_correlation_data"] = _text(value)
        elif name == "subscription_identifier":
            out["p_subscription_id"] = value if isinstance(value, list) else [value]
        elif name == "authentication_data":
            out["p_authentication_data"] = b64(value)
    return out


def properties_in(props: Any) -> dict[str, Any]:
    """VerneMQ-spelled properties from a webhook answer, in our names.
    ValueError on an unknown name or a bad value."""
    if not isinstance(props, dict):
        raise ValueError(f"properties must be an object, got {props!r}")
    out: dict[str, Any] = {}
    for name, value in props.items():
        if name in _PLAIN_BACK:
            out[_PLAIN_BACK[name]] = value
        elif name == "p_user_property":
            if not isinstance(value, list):
                raise ValueError(f"p_user_property must be a list, got {value!r}")
            pairs = []
            for item in value:
                if not isinstance(item, dict) or set(item) != {"key", "val"}:
                    raise ValueError(f"p_user_property entries are {{key, val}}, got {item!r}")
                pairs.append((unb64(item["key"]).decode("utf-8"),
                              unb64(item["val"]).decode("utf-8")))
            out["user_property"] = pairs
        elif name == "p_payload_format_indicator":
            if value not in ("utf8", "undefined"):
                raise ValueError(f"p_payload_format_indicator must be utf8 or undefined, "
                                 f"got {value!r}")
            out["payload_format_indicator"] = 1 if value == "utf8" else 0
        elif name == "p_correlation_data":
            if not isinstance(value, str):
                raise ValueError(f"p_correlation_data must be a string, got {value!r}")
            out["correlation_data"] = value.encode("utf-8")
        elif name == "p_authentication_data":
            out["authentication_data"] = unb64(value)
        else:
            raise ValueError(f"unknown property {name!r}")
    return out


def listener_type(kind: str) -> str:
    """VerneMQ's ``listener_type`` of one of our listener kinds."""
    return _LISTENER_TYPES.get(kind, "mqtt")


def _listener_fields(address: str, kind: str) -> dict[str, Any]:
    if address.startswith("local:") or kind == "unix":
        return {"listener_addr": "local", "listener_port": 0,
                "listener_type": listener_type(kind)}
    host, _, port = address.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        port_number = 0
    return {"listener_addr": host.strip("[]"), "listener_port": port_number,
            "listener_type": listener_type(kind)}


def register_body(request: Any, m5: bool, base64_payload: bool) -> dict[str, Any]:
    """auth_on_register(_m5): peer, mountpoint, client id, credentials, flags."""
    peer = request.peer or ("", 0)
    body: dict[str, Any] = {
        "peer_addr": peer[0], "peer_port": peer[1], "mountpoint": request.mountpoint or "",
        "client_id": request.client_id, "username": request.username,
        "password": _text(request.password),
    }
    if m5:
        body["clean_start"] = bool(request.clean_start)
        body["properties"] = properties_out(request.properties or {})
    else:
        body["clean_session"] = bool(request.clean_start)
    body.update(_listener_fields(request.listener_address or "", request.listener_kind))
    if request.client_cert is not None:
        body["client_cert"] = b64(request.client_cert) if base64_payload else \
            _text(request.client_cert)
    return body


def client_fields(client: Any) -> dict[str, Any]:
    """``username``, ``mountpoint``, ``client_id`` of a connected client."""
    return {"username": getattr(client, "username", None),
            "mountpoint": getattr(client, "mountpoint", "") or "",
            "client_id": getattr(client, "client_id", "")}


def peer_fields(client: Any) -> dict[str, Any]:
    """on_register(_m5): ``peer_addr``, ``peer_port``, ``mountpoint``, ``client_id``,
    ``username``."""
    peer = getattr(client, "peer", None) or ("", 0)
    return {"peer_addr": peer[0], "peer_port": peer[1],
            "mountpoint": getattr(client, "mountpoint", "") or "",
            "client_id": getattr(client, "client_id", ""),
            "username": getattr(client, "username", None)}


def publish_body(client: Any, topic: str, payload: bytes, qos: int, retain: bool,
                 properties: dict[str, Any] | None, base64_payload: bool,
                 no_payload: bool = False) -> dict[str, Any]:
    """auth_on_publish(_m5), on_publish(_m5), on_deliver(_m5)."""
    body = client_fields(client)
    body["qos"] = qos
    body["topic"] = topic
    if not no_payload:
        body["payload"] = payload_field(payload, base64_payload)
    body["retain"] = bool(retain)
    if properties is not None:
        body["properties"] = properties_out(properties)
    return body


def subscribe_body(client: Any, topics: list[tuple[str, int]],
                   properties: dict[str, Any] | None) -> dict[str, Any]:
    """auth_on_subscribe(_m5), on_subscribe(_m5): ``topics`` as ``{topic, qos}``
    objects (the _m5 forms with the default subscription options: the hook API
    passes (filter, qos) pairs only)."""
    body = client_fields(client)
    if properties is None:
        body["topics"] = [{"topic": t, "qos": q} for t, q in topics]
    else:
        body["topics"] = [{"topic": t, "qos": q, "no_local": False, "rap": False,
                           "retain_handling": "send_retain"} for t, q in topics]
        body["properties"] = properties_out(properties)
    return body
