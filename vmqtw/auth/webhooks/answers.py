"""Reading a webhook's answer: ``{"result": "ok"}`` (with modifiers),
``{"result": "next"}`` or ``{"result": {"error": ...}}``, into our Results.

VerneMQ's modifier names and encodings are translated to the hook API's
(``ok(**modifiers)``).  Anything malformed (not JSON, no ``result``, an unknown
modifier or a bad value) raises ``AnswerError``, which the auth hooks turn into
a refusal, as VerneMQ does.
"""
from __future__ import annotations

import json
from typing import Any

from vmqtw.auth.api import NEXT, OK, Error, Ok, Result
from vmqtw.auth.webhooks.bodies import properties_in, unb64

__all__ = ["AnswerError", "parse_answer", "error_reason"]


class AnswerError(ValueError):
    """An answer that is not one VerneMQ accepts; the message is the reason."""


#: auth_on_register modifiers the hook API applies, with their checks.
_REGISTER_BOOLS = ("clean_session", "upgrade_qos")
_REGISTER_INTS = ("max_message_size", "max_connection_lifetime", "max_inflight_messages",
                  "max_online_messages", "max_offline_messages", "max_message_rate")
#: VerneMQ register modifiers that vmqtw has no counterpart for: accepted
#: (checked for their type) and dropped, so a VerneMQ service works unchanged.
_REGISTER_DROPPED_BOOLS = ("allow_register", "allow_publish", "allow_subscribe",
                           "allow_unsubscribe")
_REGISTER_DROPPED_INTS = ("max_drain_time", "max_msgs_per_drain_step")
_REGISTER_DROPPED_WORDS = ("shared_subscription_policy", "queue_type")

#: Reasons with a meaning of their own in the hook API: a webhook's error text
#: must not pick those (VerneMQ answers CONNACK 5 / 0x86 for any webhook error).
_RESERVED = frozenset({"invalid_credentials", "bad_authentication_method",
                       "plugin_chain_exhausted", "plugin_error", "cancelled"})


def error_reason(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"webhook:{text}" if text in _RESERVED or not text else text


def _bool(hook: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AnswerError(f"{hook}: modifier {key} must be true or false, got {value!r}")
    return value


def _int(hook: str, key: str, value: Any, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or \
            (hi is not None and value > hi):
        raise AnswerError(f"{hook}: modifier {key} must be a whole number, got {value!r}")
    return value


def _str(hook: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise AnswerError(f"{hook}: modifier {key} must be a string, got {value!r}")
    return value


def _register(hook: str, mods: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mods.items():
        if key in _REGISTER_BOOLS:
            out[key] = _bool(hook, key, value)
        elif key in _REGISTER_INTS:
            lo = -1 if key in ("max_online_messages", "max_offline_messages") else 0
            out[key] = _int(hook, key, value, lo)
        elif key == "retry_interval":  # milliseconds in VerneMQ, seconds here
            out[key] = (_int(hook, key, value) + 999) // 1000
        elif key in ("username", "client_id", "mountpoint"):
            out[key] = _str(hook, key, value)
        elif key in _REGISTER_DROPPED_BOOLS:
            _bool(hook, key, value)
        elif key in _REGISTER_DROPPED_INTS:
            _int(hook, key, value)
        elif key in _REGISTER_DROPPED_WORDS:
            _str(hook, key, value)
        elif key == "properties" and hook == "auth_on_register_m5":
            props = properties_in(value)
            bad = set(props) - {"user_property", "session_expiry_interval"}
            if bad:
                raise AnswerError(f"{hook}: properties {sorted(bad)} cannot be modified")
        else:
            raise AnswerError(f"{hook}: unknown modifier {key!r}")
    if ("client_id" in out) != ("mountpoint" in out):
        raise AnswerError(f"{hook}: client_id and mountpoint can only be modified together")
    return out


_PUBLISH_M5_PROPERTIES = frozenset({"user_property", "message_expiry_interval", "content_type",
                                    "payload_format_indicator", "response_topic",
                                    "correlation_data", "will_delay_interval"})


def _publish(hook: str, mods: dict[str, Any], base64_payload: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mods.items():
        if key == "topic" or key == "mountpoint":
            out[key] = _str(hook, key, value)
        elif key == "payload":
            text = _str(hook, key, value)
            try:
                out[key] = unb64(text) if base64_payload else text.encode("utf-8")
            except ValueError as e:
                raise AnswerError(f"{hook}: modifier payload: {e}") from None
        elif key == "qos":
            out[key] = _int(hook, key, value, 0, 2)
        elif key == "retain":
            out[key] = _bool(hook, key, value)
        elif key == "throttle":  # no counterpart here: checked and dropped
            _int(hook, key, value)
        elif key == "properties" and hook == "auth_on_publish_m5":
            props = properties_in(value)
            bad = set(props) - _PUBLISH_M5_PROPERTIES
            if bad:
                raise AnswerError(f"{hook}: properties {sorted(bad)} cannot be modified")
            props.pop("will_delay_interval", None)  # not a PUBLISH property
            out["properties"] = props
        else:
            raise AnswerError(f"{hook}: unknown modifier {key!r}")
    return out


def _topics(hook: str, value: Any) -> list[tuple[str, int]]:
    if not isinstance(value, list):
        raise AnswerError(f"{hook}: topics must be a list, got {value!r}")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("topic"), str):
            raise AnswerError(f"{hook}: bad topics entry {entry!r}")
        out.append((entry["topic"], _int(hook, "qos", entry.get("qos"), 0, 255)))
    return out


def _deliver(hook: str, mods: dict[str, Any], base64_payload: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mods.items():
        if key == "topic":
            out[key] = _str(hook, key, value)
        elif key == "payload":
            try:
                out[key] = unb64(value) if base64_payload else _str(hook, key, value).encode()
            except ValueError as e:
                raise AnswerError(f"{hook}: modifier payload: {e}") from None
        elif key == "properties" and hook == "on_deliver_m5":
            properties_in(value)  # checked; the hook API rewrites topic and payload only
        else:
            raise AnswerError(f"{hook}: unknown modifier {key!r}")
    return out


def _on_auth(hook: str, mods: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mods.items():
        if key == "reason_code":
            code = _int(hook, key, value)
            if code not in (0, 24):
                raise AnswerError(f"{hook}: reason_code must be 0 or 24, got {code}")
            if code == 24:
                out["continue_authentication"] = True
        elif key == "properties":
            props = properties_in(value)
            if "authentication_data" in props:
                out["authentication_data"] = props["authentication_data"]
        else:
            raise AnswerError(f"{hook}: unknown modifier {key!r}")
    return out


def parse_answer(hook: str, data: bytes, base64_payload: bool = True) -> Result:
    """The Result of one endpoint's answer to ``hook``; AnswerError if malformed."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise AnswerError("received_payload_not_json") from None
    if not isinstance(doc, dict) or "result" not in doc:
        raise AnswerError("no result in the answer")
    result = doc["result"]
    if result == "next":
        return NEXT
    if isinstance(result, dict) and "error" in result:
        return Error(error_reason(result["error"]))
    if result != "ok":
        raise AnswerError(f"unknown result {result!r}")
    mods = doc.get("modifiers", {})
    if not isinstance(mods, dict):
        raise AnswerError(f"modifiers must be an object, got {mods!r}")
    try:
        if hook.startswith("auth_on_register"):
            out = _register(hook, mods)
        elif hook.startswith("auth_on_publish"):
            out = _publish(hook, mods, base64_payload)
        elif hook in ("auth_on_subscribe", "on_unsubscribe"):
            out = {}
            if "topics" in doc:
                out["topics"] = (_topics(hook, doc["topics"]) if hook == "auth_on_subscribe"
                                 else _strings(hook, doc["topics"]))
        elif hook in ("auth_on_subscribe_m5", "on_unsubscribe_m5"):
            unknown = set(mods) - {"topics"}
            if unknown:
                raise AnswerError(f"{hook}: unknown modifier(s) {sorted(unknown)}")
            out = {}
            if "topics" in mods:
                out["topics"] = (_topics(hook, mods["topics"]) if hook == "auth_on_subscribe_m5"
                                 else _strings(hook, mods["topics"]))
        elif hook.startswith("on_deliver"):
            out = _deliver(hook, mods, base64_payload)
        elif hook == "on_auth_m5":
            out = _on_auth(hook, mods)
        else:
            out = {}
    except ValueError as e:
        if isinstance(e, AnswerError):
            raise
        raise AnswerError(f"{hook}: {e}") from None
    return Ok(out) if out else OK


def _strings(hook: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise AnswerError(f"{hook}: topics must be a list of strings, got {value!r}")
    return value
