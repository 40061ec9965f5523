"""One MQTT input per read for the WebSocket layer (``MQTTWebSocketProtocol``).

MQTT.js and most browser clients send every MQTT packet in a WebSocket frame
of its own.  Handing each frame's bytes to MQTT as it is parsed meant one
decode and one flush of the broker's output (so one WebSocket message out per
subscriber) per message in; on TCP a read of many packets is one of each.
Once the client is logged in, ``ReadBatching`` collects the MQTT bytes of all
the frames autobahn parses from one read and hands them to MQTT in one call at
the end of it.  Whatever ends the stream inside that read (a close frame, a
protocol failure, a dropped connection) first delivers the frames before it,
so MQTT sees the same bytes in the same order as before.

Before login every frame goes through at once, as before: the pre-auth size
limits are lifted by the CONNACK, which must go out before the next frame is
checked.
"""
from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol


class ReadBatching(WebSocketServerProtocol):
    """The base of ``MQTTWebSocketProtocol``, whose ``onMessageFrameData``
    appends to ``_batch`` when it is a list."""

    mqtt: Any
    preauth: bool
    #: While autobahn parses one read after login: the MQTT bytes of its
    #: frames, in order; else None.
    _batch: list[bytes] | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.preauth or self.mqtt is None or self._batch is not None:
            super().dataReceived(data)
            return
        self._batch = []
        try:
            super().dataReceived(data)
        finally:
            self._deliver_batch(last=True)

    def _deliver_batch(self, last: bool = False) -> None:
        """Hand the frames collected so far to MQTT (and stop collecting if ``last``)."""
        batch = self._batch
        if batch is None:
            return
        self._batch = None if last else []
        if batch:
            mqtt = self.mqtt
            if mqtt is not None:
                mqtt.dataReceived(batch[0] if len(batch) == 1 else b"".join(batch))

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        self._deliver_batch()
        return super().onCloseFrame(code, reasonRaw)

    def dropConnection(self, abort: bool = False) -> None:
        self._deliver_batch()
        super().dropConnection(abort)

    def _fail_connection(self, *args: Any, **kwargs: Any) -> None:
        self._deliver_batch()
        super()._fail_connection(*args, **kwargs)
