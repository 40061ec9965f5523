"""Shared helpers for the integration tests.

- ``BrokerTestCase.start_broker(text)`` runs a real ``BrokerService`` in this
  process from configuration text, on sockets bound to port 0 (or unix
  sockets), and stops it in a cleanup that waits until every listener is
  closed and every client connection is gone.
- ``Paho`` wraps a paho-mqtt client with blocking, timed operations; use it
  from a worker thread (``in_thread``), never from the reactor thread.
- ``RawClient`` is a byte-level MQTT client living in the reactor: send bytes,
  wait for N bytes or for the connection to close, each with a timeout.
- ``run_process`` runs a program (mosquitto_pub/sub, twistd) and collects its
  output, killing it if it overruns its timeout.
- ``missing(reason)`` / ``need_mosquitto_clients()``: a test whose program is
  not installed is skipped on a developer's machine but fails under CI (the
  environment variable ``CI`` set), where the test command installs it.

Nothing here sleeps to synchronise: every wait is on an event with a timeout.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import sys
import threading
from typing import Any, Callable, Iterable, NoReturn, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint, connectProtocol,
)
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from vmqtw.config import load
from vmqtw.service import BrokerService
# MQTT bytes built by hand (independently of vmqtw's codec), shared with the unit tests.
from vmqtw.test.wire import (  # noqa: F401 (re-exported for the integration tests)
    CONNACK_OK, DISCONNECT, connect_packet, publish_packet, subscribe_packet, utf8, varint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Seconds any single wait may take before the test fails.
TIMEOUT = 10.0

MQTTv31 = mqtt.MQTTv31
MQTTv311 = mqtt.MQTTv311
MQTTv5 = mqtt.MQTTv5

#: The smallest useful configuration: one anonymous tcp listener on port 0.
BASIC_CONFIG = """\
allow_anonymous = on
listener.tcp.default = 127.0.0.1:0
"""


# ---------------------------------------------------------------------------
# Waiting on things, with timeouts
# ---------------------------------------------------------------------------

def with_timeout(d: Deferred, timeout: float = TIMEOUT, what: str = "event") -> Deferred:
    """``d`` failing with a readable TimeoutError if it does not fire in time."""
    def explain(f: Failure) -> Failure:
        if f.check(defer.TimeoutError):
            raise defer.TimeoutError(f"timed out after {timeout}s waiting for {what}")
        return f
    d.addTimeout(timeout, reactor)
    return d.addErrback(explain)


def quiet_period(seconds: float) -> Deferred:
    """A bounded wait used only where a test expects that *nothing* happens."""
    return task.deferLater(reactor, seconds, lambda: None)


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """Run a blocking (paho) scenario in a worker thread; every wait inside it is timed."""
    return threads.deferToThread(fn, *args, **kwargs)


# ---------------------------------------------------------------------------
# Programs the tests need
# ---------------------------------------------------------------------------

#: Why tests driving mosquitto_pub/mosquitto_sub cannot run.
MOSQUITTO_CLIENTS_MISSING = ("mosquitto_pub/mosquitto_sub are not installed "
                             "(apt-get install mosquitto-clients)")


def in_ci() -> bool:
    """Whether the tests run under CI: the environment variable ``CI`` is set
    to anything but empty, ``0``, ``false`` or ``no`` (GitHub Actions and
    scripts/test.sh set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """End the running test because something it needs is not installed.

    Raises ``SkipTest(reason)`` on a developer's machine.  Under CI the test
    command installs every program the tests use, so a missing one is a broken
    setup that a skip would hide: the test fails with ``reason`` instead."""
    if in_ci():
        raise AssertionError(f"{reason} -- CI is set and the test command installs it, "
                             "so this fails instead of skipping")
    raise unittest.SkipTest(reason)


def need_mosquitto_clients() -> tuple[str, str]:
    """The paths of ``mosquitto_pub`` and ``mosquitto_sub``; see :func:`missing`
    for what happens when one is not installed.  Call it from ``setUp``."""
    pub, sub = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if pub is None or sub is None:
        missing(MOSQUITTO_CLIENTS_MISSING)
    return pub, sub


# ---------------------------------------------------------------------------
# The broker under test
# ---------------------------------------------------------------------------

class BrokerTestCase(unittest.TestCase):
    """A TestCase that can start brokers, raw clients and paho clients and
    tears all of them down, in reverse order, when the test ends."""

    timeout = 60  # trial's per-test limit; our own waits are much shorter

    def write_config(self, text: str) -> str:
        """Write ``text`` to a new file; returns its absolute path."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def start_broker(self, text: str = BASIC_CONFIG) -> BrokerService:
        """Start a broker from configuration ``text`` (listeners on port 0)."""
        config = load(self.write_config(text))
        service = BrokerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(stop_broker, service)
        return service

    def port_of(self, service: BrokerService, listener: str = "tcp.default") -> int:
        return service.listeners[listener].port.getHost().port

    # -- raw clients --

    @inlineCallbacks
    def raw_client(self, service: BrokerService | None = None, listener: str = "tcp.default",
                   *, host: str | None = None, port: int | None = None,
                   path: str | None = None):
        """Connect a RawClient to a listener (by name) or to host/port or a unix path."""
        if service is not None:
            lport = service.listeners[listener].port
            addr = lport.getHost()
            if getattr(addr, "name", None) is not None:
                path = addr.name.decode() if isinstance(addr.name, bytes) else addr.name
            else:
                host, port = addr.host, addr.port
        if path is not None:
            endpoint: Any = UNIXClientEndpoint(reactor, path, timeout=TIMEOUT)
        elif host is not None and ":" in host:
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=TIMEOUT)
        else:
            endpoint = TCP4ClientEndpoint(reactor, host or "127.0.0.1", port, timeout=TIMEOUT)
        client = RawClient()
        yield with_timeout(connectProtocol(endpoint, client), what="TCP connect")
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def connected_raw_client(self, service: BrokerService, client_id: str,
                             listener: str = "tcp.default", level: int = 4):
        """A RawClient that has sent CONNECT and received CONNACK 0."""
        client = yield self.raw_client(service, listener)
        client.send(connect_packet(client_id, level))
        connack = yield client.read(4, what="CONNACK")
        self.assertEqual(connack, CONNACK_OK)
        return client

    # -- paho clients --

    def paho(self, port: int, client_id: str, protocol: int = MQTTv311, **kwargs: Any) -> "Paho":
        """A Paho client that is closed (in a worker thread) when the test ends."""
        client = Paho(port, client_id, protocol, **kwargs)
        self.addCleanup(lambda: in_thread(client.close))
        return client


@inlineCallbacks
def stop_broker(service: BrokerService, timeout: float = TIMEOUT):
    """Stop a broker and wait until its listeners are closed and every client
    connection is gone, then cancel the connection-abort timers the protocol
    leaves behind, so trial's reactor-cleanliness check passes."""
    limiters = [svc.limiter for svc in service.listeners.values()]
    if service.running:
        yield with_timeout(defer.maybeDeferred(service.stopService), timeout,
                           "the broker to stop")
    for limiter in limiters:
        yield with_timeout(limiter.when(lambda n: n == 0), timeout,
                           "every connection to close")
    cancel_abort_timers()


def cancel_abort_timers() -> None:
    """MQTTProtocol.close() schedules ``_abort_if_open`` 5 s ahead and never
    cancels it; once every connection is closed those calls do nothing."""
    for call in reactor.getDelayedCalls():
        func = getattr(call, "func", None)
        if getattr(func, "__name__", "") == "_abort_if_open" and call.active():
            call.cancel()


def abort_timers_pending() -> int:
    return sum(1 for c in reactor.getDelayedCalls()
               if getattr(getattr(c, "func", None), "__name__", "") == "_abort_if_open")


class SubscriptionWatcher:
    """Fires Deferreds when the broker has added a given subscription.

    Wraps ``broker.subscribe`` on the instance (the protocol calls it after
    writing SUBACK, in the same synchronous step), so a test can wait until a
    separate process such as mosquitto_sub is really subscribed.
    """

    def __init__(self, service: BrokerService) -> None:
        self.broker = service.broker
        self.seen: list[str] = []
        self.waiters: list[tuple[str, Deferred]] = []
        original = self.broker.subscribe

        def subscribe(session: Any, topic_filter: str, options: Any) -> Any:
            result = original(session, topic_filter, options)
            self.seen.append(topic_filter)
            for waiter in [w for w in self.waiters if w[0] == topic_filter]:
                self.waiters.remove(waiter)
                waiter[1].callback(topic_filter)
            return result

        self.broker.subscribe = subscribe  # type: ignore[method-assign]

    def wait(self, topic_filter: str, timeout: float = TIMEOUT) -> Deferred:
        d: Deferred = Deferred()
        if topic_filter in self.seen:
            self.seen.remove(topic_filter)
            d.callback(topic_filter)
            return d
        self.waiters.append((topic_filter, d))
        return with_timeout(d, timeout, f"a subscription to {topic_filter!r}")


def when_session_event(service: BrokerService, client_id: str, events: Iterable[str],
                       timeout: float = TIMEOUT) -> Deferred:
    """Fires with the event name when the broker reports one of ``events``
    ("register", "wakeup", "offline", "gone", "expired") for ``client_id``."""
    wanted = set(events)
    observers = service.broker.session_observers
    d: Deferred = Deferred()

    def observer(event: str, session: Any) -> None:
        if session.client_id == client_id and event in wanted and not d.called:
            observers.remove(observer)
            d.callback(event)

    def cancelled(result: Any) -> Any:
        if observer in observers:
            observers.remove(observer)
        return result

    observers.append(observer)
    return with_timeout(d, timeout, f"{sorted(wanted)} for {client_id!r}").addBoth(cancelled)


# ---------------------------------------------------------------------------
# A raw, byte-level client in the reactor
# ---------------------------------------------------------------------------

class RawClient(Protocol):
    """Collects everything the broker sends; waits are Deferreds with timeouts."""

    def __init__(self) -> None:
        self.buffer = b""
        self.received_total = 0
        self.is_closed = False
        self._readers: list[tuple[int, Deferred]] = []
        self._close_waiters: list[Deferred] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        self.received_total += len(data)
        while self._readers and len(self.buffer) >= self._readers[0][0]:
            n, d = self._readers.pop(0)
            chunk, self.buffer = self.buffer[:n], self.buffer[n:]
            d.callback(chunk)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.is_closed = True
        readers, self._readers = self._readers, []
        for n, d in readers:
            d.errback(ConnectionError(
                f"connection closed with {len(self.buffer)} of {n} bytes: {self.buffer!r}"))
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def read(self, n: int, timeout: float = TIMEOUT, what: str = "data") -> Deferred:
        """Fires with exactly ``n`` bytes; fails if the connection closes first."""
        if len(self.buffer) >= n:
            chunk, self.buffer = self.buffer[:n], self.buffer[n:]
            return defer.succeed(chunk)
        if self.is_closed:
            return defer.fail(ConnectionError(f"connection already closed: {self.buffer!r}"))
        entry: list[Any] = []

        def cancel(d: Deferred) -> None:
            if entry and entry[0] in self._readers:
                self._readers.remove(entry[0])

        d: Deferred = Deferred(cancel)
        entry.append((n, d))
        self._readers.append(entry[0])
        return with_timeout(d, timeout, f"{n} bytes of {what}")

    def when_closed(self, timeout: float = TIMEOUT, what: str = "the broker to close "
                    "the connection") -> Deferred:
        if self.is_closed:
            return defer.succeed(None)

        def cancel(d: Deferred) -> None:
            if d in self._close_waiters:
                self._close_waiters.remove(d)

        d: Deferred = Deferred(cancel)
        self._close_waiters.append(d)
        return with_timeout(d, timeout, what)

    def close(self) -> Deferred:
        """Close our side and wait until the connection is gone."""
        if self.is_closed:
            return defer.succeed(None)
        d = self.when_closed(what="our own close to complete")
        self.transport.loseConnection()
        return d

    def abort(self) -> Deferred:
        if self.is_closed:
            return defer.succeed(None)
        d = self.when_closed(what="our own abort to complete")
        self.transport.abortConnection()
        return d


@inlineCallbacks
def read_packet(client: RawClient, what: str = "a packet") -> Any:
    """Fires with one whole MQTT packet read from ``client``: (first byte, body)."""
    first = (yield client.read(1, what=what))[0]
    length, shift = 0, 0
    for _ in range(4):
        byte = (yield client.read(1, what=f"the length of {what}"))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = (yield client.read(length, what=what)) if length else b""
    return first, body


# ---------------------------------------------------------------------------
# paho-mqtt, driven from worker threads
# ---------------------------------------------------------------------------

class Paho:
    """A paho-mqtt client with blocking, timed operations.

    paho's network thread (``loop_start``) runs with ``reconnect_on_failure``
    off, so a client the broker disconnects (e.g. on takeover) stays
    disconnected and the test can observe it.  (Do not drive ``loop()`` from a
    thread of our own: without ``loop_start`` paho writes from the publishing
    thread too, and two writers reorder or interleave packets.)
    """

    def __init__(self, port: int, client_id: str, protocol: int = MQTTv311, *,
                 clean_session: bool | None = True, host: str = "127.0.0.1",
                 will: tuple[str, bytes, int, bool] | None = None,
                 keepalive: int = 60, timeout: float = TIMEOUT,
                 username: str | None = None, password: str | None = None) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.timeout = timeout
        self.keepalive = keepalive
        if protocol == MQTTv5:
            clean_session = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, clean_session=clean_session,
                                  reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: tuple[int, bool] | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_reason: Any = None
        self._subacks: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self._looping = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe

    # -- callbacks (paho's network thread) --

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self.connack = (reason.value, bool(flags.session_present))
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.messages.put(message)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.disconnect_reason = reason
        self.disconnected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any,
                      properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    # -- blocking operations (call from a worker thread) --

    def connect(self, expect_success: bool = True, **connect_args: Any) -> tuple[int, bool]:
        """CONNECT and wait for CONNACK; returns (return code, session present).
        ``connect_args`` go to paho's connect() (e.g. clean_start, properties)."""
        self.connected.clear()
        self.disconnected.clear()
        self.connack = None
        self.client.connect(self.host, self.port, keepalive=self.keepalive, **connect_args)
        self.client.loop_start()
        self._looping = True
        if not self.connected.wait(self.timeout):
            raise AssertionError(f"{self.client_id}: no CONNACK within {self.timeout}s")
        assert self.connack is not None
        if expect_success and self.connack[0] != 0:
            raise AssertionError(f"{self.client_id}: CONNACK {self.connack[0]}")
        return self.connack

    def subscribe(self, topic: str, qos: int = 0) -> list[int]:
        """SUBSCRIBE and wait for SUBACK; returns the granted codes."""
        with self._cond:  # SUBACK must not be handled before we know the mid
            rc, mid = self.client.subscribe(topic, qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise AssertionError(f"{self.client_id}: subscribe failed: {rc}")
            if not self._cond.wait_for(lambda: mid in self._subacks, self.timeout):
                raise AssertionError(f"{self.client_id}: no SUBACK for {topic!r}")
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """PUBLISH and wait until it is acknowledged (QoS 1/2) or written (QoS 0)."""
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise AssertionError(f"{self.client_id}: publish to {topic!r} not completed")

    def get(self, timeout: float | None = None) -> mqtt.MQTTMessage:
        """The next message received; fails after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within "
                                 f"{self.timeout if timeout is None else timeout}s") from None

    def get_many(self, n: int) -> list[mqtt.MQTTMessage]:
        return [self.get() for _ in range(n)]

    def wait_disconnected(self) -> None:
        """Wait until the connection is gone (closed by either side)."""
        if not self.disconnected.wait(self.timeout):
            raise AssertionError(f"{self.client_id}: still connected after {self.timeout}s")
        self._stop_loop()

    def disconnect(self) -> None:
        """A clean DISCONNECT; waits until the socket is closed."""
        self.client.disconnect()
        self.wait_disconnected()

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT (as if the client died)."""
        sock = self.client.socket()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()

    def _stop_loop(self) -> None:
        if self._looping:
            self._looping = False
            self.client.loop_stop()  # joins paho's network thread

    def close(self) -> None:
        """Cleanup: disconnect if still connected, stop the loop, close the socket."""
        try:
            if self._looping and not self.disconnected.is_set():
                self.client.disconnect()
                self.disconnected.wait(self.timeout)
        finally:
            self._stop_loop()
            sock = self.client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass


def payloads(messages: Sequence[mqtt.MQTTMessage]) -> list[bytes]:
    return [m.payload for m in messages]


# ---------------------------------------------------------------------------
# Child processes (mosquitto_pub/sub, twistd)
# ---------------------------------------------------------------------------

class _Collect(ProcessProtocol):
    def __init__(self, on_stdout: Callable[[bytes], None] | None = None) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred = Deferred()
        self.on_stdout = on_stdout

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if self.on_stdout is not None:
            self.on_stdout(bytes(self.out))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        if reason.check(ProcessTerminated) and reason.value.signal is not None:
            code = -reason.value.signal
        self.ended.callback((bytes(self.out), bytes(self.err), code))


def child_env() -> dict[str, str]:
    """The environment for child processes: the repo first on PYTHONPATH, so
    twistd finds this checkout's vmqtw and its twisted/plugins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_process(executable: str, args: Sequence[str], timeout: float = TIMEOUT,
                cwd: str | None = None, stdin: bytes | None = None) -> Deferred:
    """Run a program to completion; fires with (stdout, stderr, exit code).
    A program still running after ``timeout`` is killed and the wait fails."""
    proto = _Collect()
    transport = reactor.spawnProcess(proto, executable, [executable, *args],
                                     env=child_env(), path=cwd)
    if stdin is not None:
        transport.write(stdin)
    transport.closeStdin()
    return _kill_on_timeout(proto, transport, timeout, f"{os.path.basename(executable)} to exit")


def _kill_on_timeout(proto: _Collect, transport: Any, timeout: float, what: str) -> Deferred:
    def overrun() -> None:
        try:
            transport.signalProcess("KILL")
        except Exception:
            pass

    call = reactor.callLater(timeout, overrun)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
            return result
        raise defer.TimeoutError(f"timed out after {timeout}s waiting for {what}; "
                                 f"output {result!r}")

    return proto.ended.addCallback(done)


class RunningProcess:
    """A long-running child (a broker) whose stdout we watch for a pattern."""

    def __init__(self, executable: str, args: Sequence[str], cwd: str | None = None) -> None:
        self._patterns: list[tuple[re.Pattern[bytes], Deferred]] = []
        self.proto = _Collect(self._check)
        self.transport = reactor.spawnProcess(self.proto, executable, [executable, *args],
                                              env=child_env(), path=cwd)
        self.transport.closeStdin()
        self.result: Deferred | None = None

    def _check(self, out: bytes) -> None:
        for item in list(self._patterns):
            m = item[0].search(out)
            if m is not None:
                self._patterns.remove(item)
                item[1].callback(m)

    def wait_for_output(self, pattern: bytes, timeout: float = TIMEOUT) -> Deferred:
        """Fires with the regex match once stdout contains ``pattern``; fails
        if the process exits first or the timeout passes."""
        rx = re.compile(pattern)
        m = rx.search(bytes(self.proto.out))
        if m is not None:
            return defer.succeed(m)
        d: Deferred = Deferred()
        self._patterns.append((rx, d))

        def ended(result: Any) -> Any:
            if not d.called:
                out, err, code = result
                d.errback(AssertionError(f"process exited ({code}) before printing "
                                         f"{pattern!r}:\nstdout: {out!r}\nstderr: {err!r}"))
            return result

        self.proto.ended.addBoth(ended)
        return with_timeout(d, timeout, f"{pattern!r} on stdout")

    def stop(self, timeout: float = TIMEOUT) -> Deferred:
        """SIGTERM, then fire with (stdout, stderr, exit code) when it has exited."""
        if self.result is None:
            self.result = _kill_on_timeout(self.proto, self.transport, timeout,
                                           "the process to exit after SIGTERM")
            try:
                self.transport.signalProcess("TERM")
            except Exception:  # already gone
                pass
        return self.result


TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
