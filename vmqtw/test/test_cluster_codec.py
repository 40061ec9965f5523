"""The vmq link wire format: frames, records, batching and the cookie handshake."""
from __future__ import annotations

import hmac
import random
import struct
from hashlib import sha256

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from vmqtw.cluster.codec import (
    ACCEPT, BATCH, CHALLENGE, HELLO, REFUSE, RESPONSE,
    BatchEncoder, Enq, EnqAck, FrameDecoder, FrameTooLarge, LinkError, MalformedFrame, Msg,
    RecordDecoder, RecordTooLarge, Takeover, TakeoverDone, UnexpectedFrame, decode_batch,
    encode_frame, encode_record,
)
from vmqtw.cluster.handshake import (
    ClientHandshake, CookieMismatch, HandshakeError, HandshakeRefused, ServerHandshake,
    WrongCookieRefused,
)

# Expected bytes written out by hand from the format table in the codec's docstring.
MSG_RECORD = (
    b"\x01"                  # kind MSG
    b"\x05"                  # qos 1 | retain
    b"\x00\x02"              # len(mountpoint)
    b"\x00\x03"              # len(topic)
    b"\x00\x00\x00\x02"      # len(properties)
    b"\x00\x00\x00\x04"      # len(payload)
    b"mp" b"a/b" b"\x01\x00" b"data"
)
ENQ_RECORD = (
    b"\x02" b"\x02" b"\x00\x00" b"\x00\x01" b"\x00\x00\x00\x00" b"\x00\x00\x00\x01"
    b"\x00\x00\x00\x00\x00\x00\x01\x00"   # ref 256
    b"\x00\x02"                           # len(client id)
    b"t" b"p" b"c1"
)
ENQ_ACK_RECORD = b"\x03\x01\x00\x00\x00\x00\x00\x00\x00\x07"
TAKEOVER_RECORD = (b"\x04\x00\x00\x00\x02" + (9).to_bytes(8, "big") + (3).to_bytes(8, "big")
                   + b"c1")
TAKEOVER_DONE_RECORD = (b"\x05\x00\x00\x00\x00\x02" + (9).to_bytes(8, "big")
                        + (3).to_bytes(8, "big") + b"c1")

RECORDS = [
    Msg("mp", "a/b", b"data", 1, True, b"\x01\x00"),
    Enq(256, "", "c1", "t", b"p", 2),
    EnqAck(7, 1),
    Takeover(9, "", "c1", 3),
    TakeoverDone(9, "", "c1", 3, 0),
]
BODY = MSG_RECORD + ENQ_RECORD + ENQ_ACK_RECORD + TAKEOVER_RECORD + TAKEOVER_DONE_RECORD
FRAME = struct.pack(">IB", len(BODY) + 1, BATCH) + BODY


class RecordVectorTests(SynchronousTestCase):

    def test_each_record_encodes_to_the_documented_bytes(self) -> None:
        """Every record kind encodes to the bytes laid out in the format table."""
        expected = [MSG_RECORD, ENQ_RECORD, ENQ_ACK_RECORD, TAKEOVER_RECORD,
                    TAKEOVER_DONE_RECORD]
        self.assertEqual([encode_record(r) for r in RECORDS], expected)

    def test_batch_encoder_builds_one_frame(self) -> None:
        """Records added to a batch encoder come out as one BATCH frame."""
        enc = BatchEncoder()
        for r in RECORDS:
            enc.add(r)
        self.assertEqual(enc.pending_bytes, len(FRAME))
        self.assertEqual(enc.pending_records, len(RECORDS))
        self.assertEqual(enc.take(), [FRAME])
        self.assertEqual((enc.take(), enc.pending_bytes), ([], 0))

    def test_vector_fed_whole(self) -> None:
        """The frame fed at once decodes to all records, in order."""
        self.assertEqual(RecordDecoder().feed(FRAME), RECORDS)

    def test_vector_fed_byte_by_byte(self) -> None:
        """The frame fed one byte at a time decodes to the same records."""
        dec = RecordDecoder()
        got = []
        for i in range(len(FRAME)):
            got.extend(dec.feed(FRAME[i:i + 1]))
        self.assertEqual(got, RECORDS)
        self.assertEqual(dec.frames.buffered, 0)

    def test_vector_fed_in_random_chunks(self) -> None:
        """Several frames split at random points decode to every record in order."""
        stream = FRAME * 5
        rnd = random.Random(16)
        for _ in range(50):
            dec = RecordDecoder()
            got = []
            p = 0
            while p < len(stream):
                n = rnd.randint(1, 40)
                got.extend(dec.feed(stream[p:p + n]))
                p += n
            self.assertEqual(got, RECORDS * 5)

    def test_large_frame_in_many_pieces(self) -> None:
        """A frame much larger than one read arrives intact when fed in small pieces."""
        big = Msg("", "big", bytes(range(256)) * 2000)
        enc = BatchEncoder()
        enc.add(big)
        (frame,) = enc.take()
        dec = RecordDecoder()
        got = []
        for p in range(0, len(frame), 1000):
            got.extend(dec.feed(frame[p:p + 1000]))
        self.assertEqual(got, [big])

    def test_encoder_cuts_frames_at_the_size_limit(self) -> None:
        """No frame exceeds max_frame_size; records are spread over several frames."""
        rec = Msg("", "t", b"x" * 100)
        size = len(encode_record(rec))
        enc = BatchEncoder(max_frame_size=size * 3 + 1)
        for _ in range(10):
            enc.add(rec)
        frames = enc.take()
        self.assertEqual(len(frames), 4)
        for f in frames:
            self.assertLessEqual(len(f) - 4, size * 3 + 1)
        self.assertEqual(RecordDecoder(size * 3 + 1).feed(b"".join(frames)), [rec] * 10)

    def test_record_larger_than_a_frame_is_refused(self) -> None:
        """A record that fits in no frame raises RecordTooLarge and is not queued."""
        enc = BatchEncoder(max_frame_size=50)
        self.assertRaises(RecordTooLarge, enc.add, Msg("", "t", b"x" * 100))
        self.assertEqual((enc.pending_bytes, enc.take()), (0, []))

    def test_invalid_qos_is_not_encoded(self) -> None:
        """Encoding a QoS outside 0..2 is a programming error (ValueError)."""
        self.assertRaises(ValueError, encode_record, Msg("", "t", b"", 3))


class BadInputTests(SynchronousTestCase):

    def test_truncated_frame_waits_for_more(self) -> None:
        """A partial frame yields nothing and is kept until the rest arrives."""
        dec = RecordDecoder()
        self.assertEqual(dec.feed(FRAME[:-1]), [])
        self.assertEqual(dec.frames.buffered, len(FRAME) - 1)
        self.assertEqual(dec.feed(FRAME[-1:]), RECORDS)

    def test_truncated_records_are_malformed(self) -> None:
        """A BATCH body cut inside any record raises MalformedFrame."""
        for cut in range(1, len(BODY)):
            boundaries = {len(MSG_RECORD), len(MSG_RECORD + ENQ_RECORD),
                          len(MSG_RECORD + ENQ_RECORD + ENQ_ACK_RECORD),
                          len(BODY) - len(TAKEOVER_DONE_RECORD)}
            if cut in boundaries:
                continue
            self.assertRaises(MalformedFrame, decode_batch, BODY[:cut])

    def test_oversize_frame_refused_before_buffering(self) -> None:
        """A length above the limit raises FrameTooLarge from the header alone."""
        dec = FrameDecoder(max_frame_size=100)
        self.assertRaises(FrameTooLarge, dec.feed, struct.pack(">I", 101))
        self.assertEqual(dec.buffered, 0)
        # The decoder stays broken.
        self.assertRaises(FrameTooLarge, dec.feed, FRAME)

    def test_frame_at_the_limit_is_accepted(self) -> None:
        """A frame exactly max_frame_size long decodes."""
        dec = FrameDecoder(max_frame_size=len(BODY) + 1)
        self.assertEqual(dec.feed(FRAME), [(BATCH, BODY)])

    def test_zero_length_frame(self) -> None:
        """A frame of length 0 is malformed."""
        self.assertRaises(MalformedFrame, FrameDecoder().feed, b"\x00\x00\x00\x00\x06")

    def test_unknown_frame_type(self) -> None:
        """A frame type outside the protocol is malformed."""
        self.assertRaises(MalformedFrame, FrameDecoder().feed, b"\x00\x00\x00\x01\x63")

    def test_mqtt_connect_on_the_link_is_refused(self) -> None:
        """An MQTT client that dials the vmq port is refused by the handshake size limit."""
        connect = b"\x10\x13\x00\x04MQTT\x04\x02\x00\x3c\x00\x07client1"
        dec = FrameDecoder(max_frame_size=4096)
        self.assertRaises(LinkError, dec.feed, connect)

    def test_unknown_record_kind(self) -> None:
        """An unknown record kind inside a batch is malformed."""
        self.assertRaises(MalformedFrame, decode_batch, b"\x09")

    def test_bad_flags(self) -> None:
        """QoS 3 or reserved flag bits in a record are malformed."""
        for flags in (3, 8, 0x80):
            body = bytes([1, flags]) + MSG_RECORD[2:]
            self.assertRaises(MalformedFrame, decode_batch, body)

    def test_bad_utf8_topic(self) -> None:
        """A topic that is not UTF-8 is malformed."""
        body = MSG_RECORD.replace(b"a/b", b"a\xff\xfe")
        self.assertRaises(MalformedFrame, decode_batch, body)

    def test_handshake_frame_after_handshake(self) -> None:
        """A handshake frame where batches are expected raises UnexpectedFrame."""
        self.assertRaises(UnexpectedFrame, RecordDecoder().feed, encode_frame(HELLO, b"x"))


SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
text = st.text(st.characters(codec="utf-8"), max_size=20)
u64 = st.integers(0, 2 ** 64 - 1)
qos = st.integers(0, 2)
records = st.one_of(
    st.builds(Msg, text, text, st.binary(max_size=64), qos, st.booleans(), st.binary(max_size=16)),
    st.builds(Enq, u64, text, text, text, st.binary(max_size=64), qos, st.booleans(),
              st.binary(max_size=16)),
    st.builds(EnqAck, u64, st.integers(0, 255)),
    st.builds(Takeover, u64, text, text, u64),
    st.builds(TakeoverDone, u64, text, text, u64, st.integers(0, 255)),
)


class PropertyTests(SynchronousTestCase):

    @SETTINGS
    @given(st.lists(records, max_size=30), st.integers(40, 400), st.randoms())
    def test_round_trip(self, recs: list, limit: int, rnd: random.Random) -> None:
        """Any records survive encode -> frames -> random chunks -> decode, in order."""
        enc = BatchEncoder(max_frame_size=limit)
        kept = []
        for r in recs:
            try:
                enc.add(r)
            except RecordTooLarge:
                continue
            kept.append(r)
        stream = b"".join(enc.take())
        dec = RecordDecoder(limit)
        got = []
        p = 0
        while p < len(stream):
            n = rnd.randint(1, 64)
            got.extend(dec.feed(stream[p:p + n]))
            p += n
        self.assertEqual(got, kept)

    @SETTINGS
    @given(st.binary(max_size=300))
    def test_garbage_gives_records_or_link_errors(self, data: bytes) -> None:
        """Arbitrary bytes give frames/records or a LinkError, never another exception."""
        try:
            RecordDecoder(1000).feed(data)
        except LinkError:
            pass
        try:
            decode_batch(data)
        except LinkError:
            pass


def run_handshake(client: ClientHandshake, server: ServerHandshake) -> None:
    """Drive both state machines through the frame decoder until both are done."""
    cdec, sdec = FrameDecoder(4096), FrameDecoder(4096)
    (frame,) = sdec.feed(client.start())
    (frame,) = cdec.feed(server.receive(*frame))
    (frame,) = sdec.feed(client.receive(*frame))
    (frame,) = cdec.feed(server.receive(*frame))
    assert client.receive(*frame) is None


class HandshakeTests(SynchronousTestCase):

    def test_same_cookie_accepts_and_names_both_peers(self) -> None:
        """With the same cookie both sides finish and learn each other's node name."""
        c, s = ClientHandshake("node-a", "secret"), ServerHandshake("node-b", "secret")
        run_handshake(c, s)
        self.assertTrue(c.done and s.done)
        self.assertEqual((c.peer_name, s.peer_name), ("node-b", "node-a"))

    def test_macs_are_hmac_sha256_of_the_transcript(self) -> None:
        """The CHALLENGE carries HMAC-SHA256(cookie, 'S' + nonces + names), computed
        here independently of the implementation."""
        nc, ns = b"c" * 16, b"s" * 16
        c = ClientHandshake("a", b"k", nonce=nc)
        s = ServerHandshake("bb", b"k", nonce=ns)
        hello = c.start()
        self.assertEqual(hello, b"\x00\x00\x00\x1a\x01VMQTW\x01\x00\x01a" + nc)
        challenge = s.receive(HELLO, hello[5:])
        mac = hmac.new(b"k", b"S" + nc + ns + b"\x00\x01a\x00\x02bb", sha256).digest()
        self.assertEqual(challenge[5:], b"\x00\x02bb" + ns + mac)
        response = c.receive(CHALLENGE, challenge[5:])
        mac_c = hmac.new(b"k", b"C" + nc + ns + b"\x00\x01a\x00\x02bb", sha256).digest()
        self.assertEqual(response, encode_frame(RESPONSE, mac_c))

    def test_client_with_wrong_cookie_is_refused(self) -> None:
        """With different cookies the server raises a typed CookieMismatch carrying a
        REFUSE frame, which the client turns into WrongCookieRefused."""
        c, s = ClientHandshake("a", "bad"), ServerHandshake("b", "good")
        challenge = s.receive(HELLO, c.start()[5:])
        response = c.receive(CHALLENGE, challenge[5:])
        assert response is not None
        with self.assertRaises(CookieMismatch) as cm:
            s.receive(RESPONSE, response[5:])
        refusal = cm.exception.refusal
        assert refusal is not None
        (frame,) = FrameDecoder().feed(refusal)
        self.assertEqual(frame[0], REFUSE)
        self.assertRaises(WrongCookieRefused, c.receive, *frame)
        self.assertFalse(s.done or c.done)

    def test_impostor_server_is_detected_by_the_client(self) -> None:
        """A server that does not know the cookie but accepts anyway is caught by the
        client's check of the CHALLENGE proof."""
        c, s = ClientHandshake("a", "mine"), ServerHandshake("b", "theirs")
        challenge = s.receive(HELLO, c.start()[5:])
        c.receive(CHALLENGE, challenge[5:])
        self.assertRaises(CookieMismatch, c.receive, ACCEPT, b"")
        self.assertFalse(c.done)

    def test_recorded_response_cannot_be_replayed(self) -> None:
        """A RESPONSE recorded from one handshake fails against a new server nonce."""
        c, s = ClientHandshake("a", "k"), ServerHandshake("b", "k")
        hello = c.start()
        response = c.receive(CHALLENGE, s.receive(HELLO, hello[5:])[5:])
        s2 = ServerHandshake("b", "k")
        s2.receive(HELLO, hello[5:])
        self.assertRaises(CookieMismatch, s2.receive, RESPONSE, response[5:])

    def test_bad_magic_version_and_order(self) -> None:
        """Wrong magic, wrong version or a frame out of order are HandshakeErrors."""
        self.assertRaises(HandshakeError, ServerHandshake("b", "k").receive, HELLO,
                          b"MQTT!\x01\x00\x01a" + b"n" * 16)
        self.assertRaises(HandshakeError, ServerHandshake("b", "k").receive, HELLO,
                          b"VMQTW\x02\x00\x01a" + b"n" * 16)
        self.assertRaises(HandshakeError, ServerHandshake("b", "k").receive, RESPONSE,
                          b"x" * 32)
        self.assertRaises(HandshakeError, ServerHandshake("b", "k").receive, HELLO,
                          b"VMQTW\x01\x00\x05a")
        c = ClientHandshake("a", "k")
        c.start()
        self.assertRaises(HandshakeError, c.receive, ACCEPT, b"")
        self.assertRaises(HandshakeError, c.receive, BATCH, b"")

    def test_other_refusal_reason(self) -> None:
        """A REFUSE for another reason is a HandshakeRefused carrying the reason."""
        c = ClientHandshake("a", "k")
        c.start()
        with self.assertRaises(HandshakeRefused) as cm:
            c.receive(REFUSE, b"duplicate node name")
        self.assertEqual(cm.exception.reason, "duplicate node name")
        self.assertNotIsInstance(cm.exception, CookieMismatch)


class SansIOTests(SynchronousTestCase):

    def test_codec_and_handshake_do_not_import_twisted(self) -> None:
        """The link's codec and handshake are sans-IO: importing them loads no
        Twisted module."""
        import os
        import subprocess
        import sys

        import vmqtw
        root = os.path.dirname(os.path.dirname(os.path.abspath(vmqtw.__file__)))
        script = ("import sys, vmqtw.cluster.codec, vmqtw.cluster.handshake\n"
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))")
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "[]"), out.stderr)
