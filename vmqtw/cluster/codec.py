"""The vmq link's wire format: frames, handshake messages and batched records (sans-IO).

Everything on the link is a *frame*::

    uint32 length | uint8 type | body          (length counts type + body)

The frame types are the four handshake messages (``HELLO``, ``CHALLENGE``, ``RESPONSE``,
``ACCEPT``), ``REFUSE`` and ``BATCH``. A ``BATCH`` body is a run of records, each starting
with a kind byte and a fixed ``struct`` header that holds every length, so a record is
decoded with one ``unpack_from`` and a few slices:

========= ===========================================================================
kind      fields (header, then the variable parts in this order)
========= ===========================================================================
MSG  1    flags(qos | retain<<2), len(mountpoint) u16, len(topic) u16,
          len(properties) u32, len(payload) u32; mountpoint, topic, properties, payload
ENQ  2    as MSG plus ref u64 and len(client_id) u16; ... payload, client_id
ENQ_ACK 3 status u8, ref u64
TAKEOVER 4  len(mountpoint) u16, len(client_id) u16, ref u64, epoch u64; mountpoint, client_id
TAKEOVER_DONE 5  status u8 then as TAKEOVER
HANDOVER 6  as TAKEOVER
SESSION_MSG 7  flags(qos | retain<<2), state u8, packet id u16, len(topic) u16,
          len(properties) u32, len(payload) u32, ref u64; topic, properties, payload
SESSION 8 messages u32, len(mountpoint) u16, len(client_id) u16, len(state) u32, ref u64,
          epoch u64; mountpoint, client_id, state
SESSION_ACK 9  status u8, ref u64
========= ===========================================================================

``HANDOVER`` is a ``TAKEOVER`` that also asks for the session: the receiving node
answers with the session's messages (``SESSION_MSG``, same ``ref``, in delivery order)
closed by one ``SESSION`` record that counts them and carries the rest of the state
(subscriptions, expiry; encoded by :mod:`vmqtw.cluster.migrate`); the new owner answers
``SESSION_ACK`` once it holds the session. A node that leaves the cluster pushes its
sessions the same way, unasked, with refs that have the top bit set (:data:`PUSH_REF`).

Strings are UTF-8; the MQTT 5 properties travel as the already encoded property block.
Records are named tuples: cheap to build on the decoding side, which runs once per
forwarded publish. Nothing here imports Twisted. Decoding errors are :class:`LinkError` subclasses.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Union

# Frame types.
HELLO = 1
CHALLENGE = 2
RESPONSE = 3
ACCEPT = 4
REFUSE = 5
BATCH = 6
FRAME_TYPES = frozenset((HELLO, CHALLENGE, RESPONSE, ACCEPT, REFUSE, BATCH))

# Record kinds inside a BATCH.
MSG = 1
ENQ = 2
ENQ_ACK = 3
TAKEOVER = 4
TAKEOVER_DONE = 5
HANDOVER = 6
SESSION_MSG = 7
SESSION = 8
SESSION_ACK = 9

#: Refs of sessions pushed unasked (``cluster leave``) have this bit set, so they never
#: equal the refs of the ``HANDOVER`` records a peer sends.
PUSH_REF = 1 << 63

#: ``incoming_clustering_buffer_size`` default (VerneMQ): the largest frame accepted.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
#: The largest frame accepted before the peer has proved it knows the cookie.
HANDSHAKE_MAX_FRAME_SIZE = 4096

_FRAME = struct.Struct(">IB")
_LEN = struct.Struct(">I")
_MSG = struct.Struct(">BBHHII")
_ENQ = struct.Struct(">BBHHIIQH")
_ENQ_ACK = struct.Struct(">BBQ")
_TAKEOVER = struct.Struct(">BHHQQ")
_TAKEOVER_DONE = struct.Struct(">BBHHQQ")
_SESSION_MSG = struct.Struct(">BBBHHIIQ")
_SESSION = struct.Struct(">BIHHIQQ")
_SESSION_ACK = struct.Struct(">BBQ")


class LinkError(Exception):
    """Base class of every vmq link decoding or handshake error."""


class MalformedFrame(LinkError):
    """The bytes do not form valid frames or records."""


class FrameTooLarge(LinkError):
    """A frame announces more bytes than the decoder's limit (the incoming buffer size)."""


class RecordTooLarge(LinkError):
    """A single record does not fit in one frame of the encoder's maximum size."""


class UnexpectedFrame(LinkError):
    """A well-formed frame of a type not allowed at this point of the conversation."""


class Msg(NamedTuple):
    """A publish for the receiving node's *local* subscribers (never forwarded again)."""

    mountpoint: str
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: bytes = b""


class Enq(NamedTuple):
    """Enqueue a message into the named session on the receiving node (``ref`` correlates
    the :class:`EnqAck`)."""

    ref: int
    mountpoint: str
    client_id: str
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: bytes = b""


class EnqAck(NamedTuple):
    """The answer to the :class:`Enq` with the same ``ref`` (``status`` 0 = enqueued)."""

    ref: int
    status: int = 0


class Takeover(NamedTuple):
    """Ask the receiving node to give up its session for a client id claimed with ``epoch``."""

    ref: int
    mountpoint: str
    client_id: str
    epoch: int


class TakeoverDone(NamedTuple):
    """The answer to a :class:`Takeover` (``status`` 0 = done, the queue has been sent)."""

    ref: int
    mountpoint: str
    client_id: str
    epoch: int
    status: int = 0


class Handover(NamedTuple):
    """A :class:`Takeover` that also asks for the session's state and messages."""

    ref: int
    mountpoint: str
    client_id: str
    epoch: int


class SessionMsg(NamedTuple):
    """One message of a session being moved: queued (``packet_id`` 0, ``state`` 0)
    or inflight under ``packet_id`` (``state``: what the client owes)."""

    ref: int
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    properties: bytes = b""
    packet_id: int = 0
    #: 0 queued, else inflight waiting for PUBACK (1), PUBREC (2) or PUBCOMP (3): the
    #: values of :class:`vmqtw.core.values.DeliveryState`.
    state: int = 0


class SessionState(NamedTuple):
    """Closes the move of a session: ``count`` :class:`SessionMsg` records with the
    same ``ref`` came before it; ``state`` is the encoded rest (subscriptions...)."""

    ref: int
    mountpoint: str
    client_id: str
    epoch: int
    messages: int
    state: bytes = b""


class SessionAck(NamedTuple):
    """The answer to a :class:`SessionState` (``status`` 0 = the session is here now)."""

    ref: int
    status: int = 0


Record = Union[Msg, Enq, EnqAck, Takeover, TakeoverDone, Handover, SessionMsg,
               SessionState, SessionAck]


# ---------------------------------------------------------------------------
# Encoding.

def encode_record(record: Record) -> bytes:
    """The bytes of one record inside a ``BATCH`` body."""
    kind = type(record)
    if kind is Msg:
        msg: Msg = record  # type: ignore[assignment]
        mp, topic, payload, qos, retain, props = msg
        if qos.__class__ is not int or not 0 <= qos <= 2:
            raise ValueError(f"invalid QoS {qos!r}")
        mpb = mp.encode()
        tb = topic.encode()
        return b"".join((_MSG.pack(MSG, qos | 4 if retain else qos, len(mpb), len(tb),
                                   len(props), len(payload)), mpb, tb, props, payload))
    if kind is Enq:
        enq: Enq = record  # type: ignore[assignment]
        ref, mp, cid, topic, payload, qos, retain, props = enq
        if qos.__class__ is not int or not 0 <= qos <= 2:
            raise ValueError(f"invalid QoS {qos!r}")
        mpb = mp.encode()
        tb = topic.encode()
        cb = cid.encode()
        return b"".join((_ENQ.pack(ENQ, qos | 4 if retain else qos, len(mpb), len(tb),
                                   len(props), len(payload), ref, len(cb)),
                         mpb, tb, props, payload, cb))
    if kind is EnqAck:
        ref, status = record  # type: ignore[misc]
        return _ENQ_ACK.pack(ENQ_ACK, status, ref)
    if kind is Takeover or kind is Handover:
        ref, mp, cid, epoch = record  # type: ignore[misc]
        mpb = mp.encode()
        cb = cid.encode()
        return b"".join((_TAKEOVER.pack(TAKEOVER if kind is Takeover else HANDOVER,
                                        len(mpb), len(cb), ref, epoch), mpb, cb))
    if kind is SessionMsg:
        m: SessionMsg = record  # type: ignore[assignment]
        if m.qos.__class__ is not int or not 0 <= m.qos <= 2:
            raise ValueError(f"invalid QoS {m.qos!r}")
        tb = m.topic.encode()
        return b"".join((_SESSION_MSG.pack(SESSION_MSG, m.qos | 4 if m.retain else m.qos,
                                           m.state, m.packet_id, len(tb), len(m.properties),
                                           len(m.payload), m.ref),
                         tb, m.properties, m.payload))
    if kind is SessionState:
        st: SessionState = record  # type: ignore[assignment]
        mpb = st.mountpoint.encode()
        cb = st.client_id.encode()
        return b"".join((_SESSION.pack(SESSION, st.messages, len(mpb), len(cb), len(st.state),
                                       st.ref, st.epoch), mpb, cb, st.state))
    if kind is SessionAck:
        ack: SessionAck = record  # type: ignore[assignment]
        return _SESSION_ACK.pack(SESSION_ACK, ack.status, ack.ref)
    if kind is TakeoverDone:
        ref, mp, cid, epoch, status = record  # type: ignore[misc]
        mpb = mp.encode()
        cb = cid.encode()
        return b"".join((_TAKEOVER_DONE.pack(TAKEOVER_DONE, status, len(mpb), len(cb), ref,
                                             epoch), mpb, cb))
    raise TypeError(f"not a link record: {record!r}")


_pack_msg = _MSG.pack


def encode_msg(mountpoint: str, topic: str, payload: bytes, qos: int, retain: bool,
               properties: bytes = b"") -> bytes:
    """``encode_record(Msg(...))`` without building the record, for the publish path
    (once per forwarded message); ``qos`` must be 0, 1 or 2 (not checked here)."""
    tb = topic.encode()
    flags = qos | 4 if retain else qos
    if mountpoint:
        mpb = mountpoint.encode()
        return b"".join((_pack_msg(MSG, flags, len(mpb), len(tb), len(properties),
                                   len(payload)), mpb, tb, properties, payload))
    return b"".join((_pack_msg(MSG, flags, 0, len(tb), len(properties), len(payload)), tb,
                     properties, payload))


def encode_frame(frame_type: int, body: bytes) -> bytes:
    """One frame: the 32-bit length, the type byte and ``body``."""
    return _FRAME.pack(len(body) + 1, frame_type) + body


class BatchEncoder:
    """Collects encoded records and cuts them into ``BATCH`` frames.

    No frame produced is larger than ``max_frame_size`` (the peer's incoming buffer
    limit); a record that cannot fit in any frame raises :class:`RecordTooLarge` from
    :meth:`add` and is not kept. ``pending_bytes`` is what :meth:`take` would return.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._frames: list[bytes] = []      # frames already closed
        self._parts: list[bytes] = []       # records of the open frame
        self._open = 0                      # body bytes of the open frame (type byte incl.)
        self.pending_bytes = 0
        self.pending_records = 0

    def add(self, record: Record) -> int:
        """Queue ``record``; return its encoded size."""
        return self.add_encoded(encode_record(record))

    def add_encoded(self, data: bytes) -> int:
        """Queue a record already encoded with :func:`encode_record`."""
        size = len(data)
        parts = self._parts
        if parts and self._open + size <= self.max_frame_size:  # into the open frame
            parts.append(data)
            self._open += size
            self.pending_bytes += size
            self.pending_records += 1
            return size
        if size + 1 > self.max_frame_size:
            raise RecordTooLarge(f"record of {size} bytes exceeds the frame limit "
                                 f"{self.max_frame_size}")
        if self._parts and self._open + size > self.max_frame_size:
            self._close()
        if not self._parts:
            self._open = 1
            self.pending_bytes += _FRAME.size
        self._parts.append(data)
        self._open += size
        self.pending_bytes += size
        self.pending_records += 1
        return size

    def _close(self) -> None:
        self._parts.insert(0, _FRAME.pack(self._open, BATCH))
        self._frames.append(b"".join(self._parts))
        self._parts = []
        self._open = 0

    def take(self) -> list[bytes]:
        """Every queued record as complete frames (possibly none); the encoder is emptied."""
        if self._parts:
            self._close()
        frames, self._frames = self._frames, []
        self.pending_bytes = 0
        self.pending_records = 0
        return frames


# ---------------------------------------------------------------------------
# Decoding.

_new = tuple.__new__
_MSG_SIZE = _MSG.size
_BAD_FLAGS = frozenset(f for f in range(256) if f & 3 == 3 or f & ~7)


def decode_batch(body: bytes, start: int = 0) -> list[Record]:
    """The records of a ``BATCH`` body (``body[start:]``); raises :class:`MalformedFrame`."""
    records: list[Record] = []
    append = records.append
    p = start
    n = len(body)
    try:
        while p < n:
            kind = body[p]
            if kind == MSG:
                _, flags, lmp, ltopic, lprops, lpay = _MSG.unpack_from(body, p)
                a = p + _MSG_SIZE
                b = a + lmp
                c = b + ltopic
                d = c + lprops
                p = d + lpay
                if p > n:
                    raise MalformedFrame("truncated MSG record")
                if flags in _BAD_FLAGS:
                    raise MalformedFrame(f"invalid record flags {flags:#x}")
                append(_new(Msg, (body[a:b].decode() if lmp else "", body[b:c].decode(),
                                  body[d:p], flags & 3, flags > 3, body[c:d])))
            elif kind == ENQ:
                _, flags, lmp, ltopic, lprops, lpay, ref, lcid = _ENQ.unpack_from(body, p)
                a = p + _ENQ.size
                b = a + lmp
                c = b + ltopic
                d = c + lprops
                e = d + lpay
                p = e + lcid
                if p > n:
                    raise MalformedFrame("truncated ENQ record")
                if flags in _BAD_FLAGS:
                    raise MalformedFrame(f"invalid record flags {flags:#x}")
                append(_new(Enq, (ref, body[a:b].decode(), body[e:p].decode(),
                                  body[b:c].decode(), body[d:e], flags & 3, flags > 3,
                                  body[c:d])))
            elif kind == ENQ_ACK:
                _, status, ref = _ENQ_ACK.unpack_from(body, p)
                p += _ENQ_ACK.size
                append(EnqAck(ref, status))
            elif kind == TAKEOVER or kind == HANDOVER:
                _, lmp, lcid, ref, epoch = _TAKEOVER.unpack_from(body, p)
                a = p + _TAKEOVER.size
                b = a + lmp
                p = b + lcid
                if p > n:
                    raise MalformedFrame("truncated TAKEOVER record")
                append((Takeover if kind == TAKEOVER else Handover)(
                    ref, body[a:b].decode(), body[b:p].decode(), epoch))
            elif kind == SESSION_MSG:
                _, flags, state, pid, ltopic, lprops, lpay, ref = \
                    _SESSION_MSG.unpack_from(body, p)
                a = p + _SESSION_MSG.size
                b = a + ltopic
                c = b + lprops
                p = c + lpay
                if p > n:
                    raise MalformedFrame("truncated SESSION_MSG record")
                if flags in _BAD_FLAGS or state > 3:
                    raise MalformedFrame(f"invalid record flags {flags:#x}/{state}")
                append(SessionMsg(ref, body[a:b].decode(), body[c:p], flags & 3, flags > 3,
                                  body[b:c], pid, state))
            elif kind == SESSION:
                _, count, lmp, lcid, lstate, ref, epoch = _SESSION.unpack_from(body, p)
                a = p + _SESSION.size
                b = a + lmp
                c = b + lcid
                p = c + lstate
                if p > n:
                    raise MalformedFrame("truncated SESSION record")
                append(SessionState(ref, body[a:b].decode(), body[b:c].decode(), epoch,
                                    count, body[c:p]))
            elif kind == SESSION_ACK:
                _, status, ref = _SESSION_ACK.unpack_from(body, p)
                p += _SESSION_ACK.size
                append(SessionAck(ref, status))
            elif kind == TAKEOVER_DONE:
                _, status, lmp, lcid, ref, epoch = _TAKEOVER_DONE.unpack_from(body, p)
                a = p + _TAKEOVER_DONE.size
                b = a + lmp
                p = b + lcid
                if p > n:
                    raise MalformedFrame("truncated TAKEOVER_DONE record")
                append(TakeoverDone(ref, body[a:b].decode(), body[b:p].decode(), epoch,
                                    status))
            else:
                raise MalformedFrame(f"unknown record kind {kind}")
    except struct.error:
        raise MalformedFrame("truncated record header") from None
    except UnicodeDecodeError:
        raise MalformedFrame("a string in a record is not valid UTF-8") from None
    return records


class FrameDecoder:
    """Incremental frame splitter: ``feed(bytes)`` returns every complete
    ``(frame_type, body)`` and keeps the rest.

    A frame longer than ``max_frame_size`` raises :class:`FrameTooLarge` as soon as its
    length is read, before its body is buffered. After an error the decoder stays
    broken: every later :meth:`feed` raises the same error. ``max_frame_size`` may be
    raised between calls (after the handshake, for instance).
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = b""
        self._chunks: list[bytes] = []   # pieces of one large incomplete frame
        self._have = 0
        self._need = 0                   # total bytes of that frame, header included
        self._error: LinkError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return self._have if self._chunks else len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._error is not None:
            raise self._error
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        elif self._buf:
            buf = self._buf + data
        else:
            buf = data
        try:
            return self._split(buf)
        except LinkError as e:
            self._error = e
            self._buf = b""
            raise

    def _split(self, buf: bytes) -> list[tuple[int, bytes]]:
        frames = []
        p = 0
        n = len(buf)
        limit = self.max_frame_size
        while n - p >= 4:
            (length,) = _LEN.unpack_from(buf, p)
            if length == 0:
                raise MalformedFrame("empty frame")
            if length > limit:
                raise FrameTooLarge(f"frame of {length} bytes exceeds the limit {limit}")
            end = p + 4 + length
            if end > n:
                break
            ftype = buf[p + 4]
            if ftype not in FRAME_TYPES:
                raise MalformedFrame(f"unknown frame type {ftype}")
            frames.append((ftype, buf[p + 5:end]))
            p = end
        rest = buf[p:]
        if len(rest) >= 4 and len(rest) > 65536:
            # A large frame in progress: collect its pieces and join them once.
            self._chunks = [rest]
            self._have = len(rest)
            self._need = 4 + _LEN.unpack_from(rest)[0]
            self._buf = b""
        else:
            self._buf = rest
        return frames


class RecordDecoder:
    """``feed(bytes)`` -> records, for a link whose handshake is over: every frame must
    be a ``BATCH``."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.frames = FrameDecoder(max_frame_size)

    def feed(self, data: bytes) -> list[Record]:
        records: list[Record] = []
        for ftype, body in self.frames.feed(data):
            if ftype != BATCH:
                raise UnexpectedFrame(f"frame type {ftype} after the handshake")
            records.extend(decode_batch(body))
        return records
