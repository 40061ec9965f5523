"""Listener endpoints: address forms, descriptions, the endpoint chain, the
``proxy:`` parser, and the Twisted internals the connection limits rely on."""
from __future__ import annotations

import importlib.util
import os
import socket
import sys
from typing import Any

from twisted.internet import endpoints, reactor, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from vmqtw.config import Address, ConfigError, parse
from vmqtw.transport import activation
from vmqtw.transport import endpoints as ep
from vmqtw.transport import limits
from vmqtw.transport.limits import (
    BACKLOG, LimitedConnections, LimitedServerEndpoint, LimitedTCPPort, LimitedUNIXPort,
)
from vmqtw.transport.proxy import ProxyProtocolFactory, ProxyServerEndpoint, ProxyServerParser
from vmqtw.transport.tls_endpoint import TLSServerEndpoint
from vmqtw.transport.wrapping import WrappingServerEndpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def listener(text: str) -> Any:
    return parse(text, "e.conf").listeners[0]


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.peer: Any = None

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class DescriptionTests(SynchronousTestCase):
    """Which listener addresses the configuration accepts, and what they mean."""

    def address(self, value: str, kind: str = "tcp") -> Address:
        return listener(f"listener.{kind}.a = {value}\n").address

    def test_vernemq_forms_are_unchanged(self) -> None:
        """IP:PORT and local:PATH:0 still parse to host/port/path, no description."""
        self.assertEqual(self.address("127.0.0.1:1883"), Address("127.0.0.1", 1883))
        self.assertEqual(self.address("local:/tmp/a.sock:0"),
                         Address(None, 0, "/tmp/a.sock"))
        self.assertIsNone(self.address("::1:1883").endpoint)

    def test_descriptions_are_kept_verbatim(self) -> None:
        """tcp:, tcp6:, unix:, systemd: and proxy: descriptions are stored as
        written and printed as the address."""
        for value in (r"tcp:1883:interface=\:\:1", "tcp6:1883", "unix:/run/vmqtw.sock",
                      "systemd:domain=INET:index=0", "systemd:domain=UNIX:name=mqtt",
                      "proxy:tcp:1883:interface=127.0.0.1", "tcp:0:backlog=5"):
            address = self.address(value)
            self.assertEqual((address.endpoint, str(address)), (value, value))

    def test_proxy_description_turns_proxy_protocol_on(self) -> None:
        """listener.tcp.x = proxy:tcp:1883 is a tcp listener with proxy_protocol on."""
        self.assertTrue(listener("listener.tcp.a = proxy:tcp:1883\n").proxy_protocol)
        self.assertFalse(listener("listener.tcp.a = tcp:1883\n").proxy_protocol)

    def test_bad_descriptions_name_the_line(self) -> None:
        """A bad description is a configuration error with FILE:LINE and a reason."""
        cases = {
            "tcp:x": "port must be an integer",
            "tcp:1883:nosuch=1": "unknown parameter 'nosuch'",
            "tcp:1883:backlog=lots": "backlog must be an integer",
            "tcp:": "port must be an integer",
            "unix:": "needs a socket path",
            "systemd:domain=INET": "exactly one of index=N or name=NAME",
            "systemd:domain=NOPE:index=0": "domain=INET",
            "systemd:domain=INET:index=-1": "index must be an integer",
            "proxy:proxy:tcp:1": "unknown endpoint type",
            "proxy:": "unknown endpoint type",
        }
        for value, reason in cases.items():
            with self.assertRaises(ConfigError, msg=value) as cm:
                parse(f"\nlistener.tcp.a = {value}\n", "e.conf")
            self.assertTrue(str(cm.exception).startswith("e.conf:2: listener.tcp.a: "),
                            str(cm.exception))
            self.assertIn(reason, str(cm.exception), value)

    def test_proxy_only_where_proxy_protocol_is_allowed(self) -> None:
        """proxy: descriptions follow proxy_protocol's scope (not on ssl listeners)."""
        with self.assertRaises(ConfigError) as cm:
            parse("listener.ssl.a = proxy:tcp:8883\n", "e.conf")
        self.assertIn("proxy: descriptions are for tcp", str(cm.exception))

    def test_split_like_twisted(self) -> None:
        """Descriptions split as serverFromString splits them: backslash
        escapes, ``key=value`` at the first ``=``, later ``=`` in the value."""
        from vmqtw.config.descriptions import split_description
        cases = {
            r"tcp:1883:interface=\:\:1": (["tcp", "1883"], {"interface": "::1"}),
            "systemd:domain=INET:index=0": (["systemd"], {"domain": "INET", "index": "0"}),
            r"unix:/a\:b:mode=0o660": (["unix", "/a:b"], {"mode": "0o660"}),
            "tcp:1:x=a=b": (["tcp", "1"], {"x": "a=b"}),
            "tcp:": (["tcp", ""], {}),
        }
        for description, expected in cases.items():
            self.assertEqual(split_description(description), expected, description)
        e = endpoints.serverFromString(MemoryReactorClock(), r"tcp:1883:interface=\:\:1")
        self.assertEqual((e._port, e._interface), (1883, "::1"))

    def test_is_description(self) -> None:
        """Only the known prefixes make a value a description."""
        self.assertTrue(ep.is_description("tcp:1"))
        self.assertTrue(ep.is_description("systemd:domain=INET:index=0"))
        for value in ("local:/a:0", ":::1883", "127.0.0.1:1", "ssl:8883", "tcp"):
            self.assertFalse(ep.is_description(value), value)


class AddressEndpointTests(SynchronousTestCase):
    """From an address to Twisted's endpoint for it."""

    def endpoint(self, value: str) -> Any:
        return ep.address_endpoint(MemoryReactorClock(),
                                   listener(f"listener.tcp.a = {value}\n").address)

    def test_ip_port_is_a_tcp_endpoint_with_our_backlog(self) -> None:
        """IP:PORT becomes a TCP endpoint on that interface, backlog BACKLOG."""
        e = self.endpoint("::1:1884")
        self.assertIsInstance(e, endpoints.TCP4ServerEndpoint)
        self.assertEqual((e._interface, e._port, e._backlog), ("::1", 1884, BACKLOG))

    def test_local_is_a_unix_endpoint(self) -> None:
        """local:PATH:0 becomes a UNIX endpoint on PATH."""
        e = self.endpoint("local:/tmp/x.sock:0")
        self.assertIsInstance(e, endpoints.UNIXServerEndpoint)
        self.assertEqual((e._address, e._backlog), ("/tmp/x.sock", BACKLOG))

    def test_descriptions_go_through_twisted(self) -> None:
        """tcp:/unix: descriptions are parsed by Twisted; backlog defaults to
        BACKLOG unless the description sets one; proxy: is stripped here (the
        listener's endpoint chain adds the PROXY wrapper)."""
        e = self.endpoint(r"tcp:1885:interface=\:\:1")
        self.assertEqual((e._interface, e._port, e._backlog), ("::1", 1885, BACKLOG))
        e = self.endpoint("tcp:1885:backlog=7")
        self.assertEqual(e._backlog, 7)
        e = self.endpoint("proxy:unix:/tmp/y.sock")
        self.assertIsInstance(e, endpoints.UNIXServerEndpoint)
        self.assertEqual(e._address, "/tmp/y.sock")

    def test_systemd_is_resolved_only_when_listening(self) -> None:
        """A systemd: description builds without an inherited socket; listening
        without one fails with a reason that says how to start the broker."""
        e = self.endpoint("systemd:domain=INET:index=0")
        self.assertIsInstance(e, ep.SystemdEndpoint)
        failure = self.failureResultOf(e.listen(Factory()), ValueError)
        self.assertIn("no socket inherited from systemd", str(failure.value))

    def test_inherited_descriptors(self) -> None:
        """LISTEN_FDS counts from fd 3, only for the process LISTEN_PID names."""
        me = str(os.getpid())
        self.assertEqual(activation.inherited_descriptors({"LISTEN_PID": me, "LISTEN_FDS": "2"}),
                         ([3, 4], []))
        self.assertEqual(activation.inherited_descriptors(
            {"LISTEN_PID": me, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "mqtt"}), ([3], ["mqtt"]))
        self.assertEqual(activation.inherited_descriptors({"LISTEN_PID": "1", "LISTEN_FDS": "2"}),
                         ([], []))
        self.assertEqual(activation.inherited_descriptors({}), ([], []))

    def test_systemd_index_and_name_errors(self) -> None:
        """A missing index or name is refused with what systemd did pass."""
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "mqtt"}
        self.patch(os, "environ", env)
        with self.assertRaises(ValueError) as cm:
            ep.SystemdEndpoint(reactor, "INET", index=1).resolve()
        self.assertIn("passed 1 socket(s), there is no index 1", str(cm.exception))
        with self.assertRaises(ValueError) as cm:
            ep.SystemdEndpoint(reactor, "INET", name="other").resolve()
        self.assertIn("no socket named 'other' (names: mqtt)", str(cm.exception))
        adopted = ep.SystemdEndpoint(reactor, "INET", name="mqtt").resolve()
        self.assertEqual((adopted.fileno, adopted.addressFamily), (3, socket.AF_INET))


class ListenerEndpointTests(SynchronousTestCase):
    """The endpoint chain of a listener."""

    def chain(self, text: str) -> list[Any]:
        return list(ep.endpoint_chain(ep.listener_endpoint(listener(text),
                                                           MemoryReactorClock())))

    def test_tcp_listener(self) -> None:
        """A plain tcp listener: the limits around the address's endpoint."""
        chain = self.chain("listener.tcp.a = 127.0.0.1:0\nlistener.tcp.a.max_connections = 4\n"
                           "listener.tcp.a.nr_of_acceptors = 3\n")
        self.assertEqual([type(e) for e in chain],
                         [LimitedServerEndpoint, endpoints.TCP4ServerEndpoint])
        self.assertEqual((chain[0].limiter.max_connections, chain[0].accept_batch),
                         (4, 3 * limits.ACCEPTS_PER_ACCEPTOR))

    def test_proxy_listener(self) -> None:
        """proxy_protocol = on (or a proxy: description) adds the PROXY wrapper."""
        for text in ("listener.tcp.a = 127.0.0.1:0\nlistener.tcp.a.proxy_protocol = on\n",
                     "listener.tcp.a = proxy:tcp:0\n"):
            chain = self.chain(text)
            self.assertEqual([type(e) for e in chain[:2]],
                             [ProxyServerEndpoint, LimitedServerEndpoint], text)
            self.assertEqual(chain[0].name, "tcp.a")

    def test_ssl_listener_is_a_tls_wrapper(self) -> None:
        """An ssl listener's endpoint is the TLS wrapper, built (and its files
        read) before it listens; a bad file is a LayerError naming the line."""
        from vmqtw.test.test_tls import files
        f = files()
        chain = self.chain(f"listener.ssl.a = 127.0.0.1:0\nlistener.ssl.certfile = "
                           f"{f.p('server.pem')}\nlistener.ssl.keyfile = {f.p('server.key')}\n")
        self.assertIsInstance(chain[0], TLSServerEndpoint)
        self.assertIsInstance(chain[1], LimitedServerEndpoint)
        from vmqtw.transport.errors import LayerError
        with self.assertRaises(LayerError) as cm:
            self.chain("listener.ssl.a = 127.0.0.1:0\nlistener.ssl.certfile = /nope.pem\n")
        self.assertIn("e.conf:2: listener.ssl.a.certfile: ", str(cm.exception))

    def test_wrappers_wrap_the_factory_they_listen_with(self) -> None:
        """Listening on TLS(PROXY(limits)) gives the limiter PROXY(TLS(factory)):
        bytes meet the PROXY header first, then TLS."""
        from vmqtw.test.test_tls import files
        from vmqtw.transport.tls import TLSListenerFactory
        f = files()
        memory = MemoryReactorClock()
        lst = listener(f"listener.ssl.a = 127.0.0.1:0\nlistener.ssl.certfile = "
                       f"{f.p('server.pem')}\nlistener.ssl.keyfile = {f.p('server.key')}\n")
        endpoint = ep.listener_endpoint(lst, memory)
        proxied = ProxyServerEndpoint(endpoint.wrapped, memory)
        endpoint.wrapped = proxied
        inner = Factory.forProtocol(Recorder)
        self.successResultOf(endpoint.listen(inner))
        limiter = proxied.wrapped.limiter
        self.assertIsInstance(limiter.wrappedFactory, ProxyProtocolFactory)
        self.assertIsInstance(limiter.wrappedFactory.wrappedFactory, TLSListenerFactory)
        self.assertIs(limiter.wrappedFactory.wrappedFactory.wrappedFactory, inner)


class WrappingEndpointTests(SynchronousTestCase):
    """The generic wrapping endpoint and the PROXY endpoint."""

    def test_wrapping_endpoint(self) -> None:
        """listen() wraps the factory, remembers it, and listens on the inner endpoint."""
        memory = MemoryReactorClock()
        inner = endpoints.TCP4ServerEndpoint(memory, 0)
        factory = Factory.forProtocol(Recorder)
        wrapper = WrappingServerEndpoint(inner, lambda f: LimitedConnections(f, None))
        self.assertTrue(IStreamServerEndpoint.providedBy(wrapper))
        self.successResultOf(wrapper.listen(factory))
        self.assertIs(memory.tcpServers[0][1], wrapper.factory)
        self.assertIs(wrapper.factory.wrappedFactory, factory)

    def test_proxy_endpoint_reads_the_header(self) -> None:
        """A connection on a PROXY endpoint reaches the inner protocol with the
        client address from the header, and the bytes after it."""
        memory = MemoryReactorClock()
        endpoint = ProxyServerEndpoint(endpoints.TCP4ServerEndpoint(memory, 0), memory,
                                       timeout=5)
        self.successResultOf(endpoint.listen(Factory.forProtocol(Recorder)))
        factory = memory.tcpServers[0][1]
        proto = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
        proto.makeConnection(StringTransport())
        proto.dataReceived(b"PROXY TCP4 198.51.100.7 192.0.2.1 4321 1883\r\nhello")
        inner = proto.wrappedProtocol
        self.assertEqual((inner.peer.host, inner.peer.port, inner.received),
                         ("198.51.100.7", 4321, b"hello"))
        self.assertEqual(factory.timeout, 5)


class ProxyPluginTests(SynchronousTestCase):
    """The ``proxy:`` endpoint description (twisted/plugins/vmqtw_plugin.py)."""

    def plugin_module(self) -> Any:
        path = os.path.join(REPO, "twisted", "plugins", "vmqtw_plugin.py")
        spec = importlib.util.spec_from_file_location("_vmqtw_plugin_under_test", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def test_plugin_file_registers_proxy(self) -> None:
        """The dropin exposes a string parser for the prefix 'proxy'."""
        parsers = [v for v in vars(self.plugin_module()).values()
                   if IStreamServerEndpointStringParser.providedBy(v)]
        self.assertEqual([p.prefix for p in parsers], ["proxy"])

    def test_parser_wraps_any_description(self) -> None:
        """proxy:<description>[:timeout=S] wraps the endpoint Twisted builds
        for the rest of the description."""
        memory = MemoryReactorClock()
        e = ProxyServerParser().parseStreamServer(memory, "tcp", "1883",
                                                  interface="127.0.0.1", timeout="2.5")
        self.assertIsInstance(e, ProxyServerEndpoint)
        self.assertIsInstance(e.wrapped, endpoints.TCP4ServerEndpoint)
        self.assertEqual((e.wrapped._port, e.wrapped._interface, e.timeout),
                         (1883, "127.0.0.1", 2.5))
        e = ProxyServerParser().parseStreamServer(memory, "unix", "/tmp/p.sock", timeout="0")
        self.assertEqual((e.wrapped._address, e.timeout), ("/tmp/p.sock", None))
        self.assertRaises(ValueError, ProxyServerParser().parseStreamServer, memory)

    def test_server_from_string(self) -> None:
        """serverFromString(reactor, 'proxy:tcp:...') finds our plugin (this
        checkout's, even when an installed copy comes first on the plugin path)."""
        import twisted.plugins
        here = os.path.join(REPO, "twisted", "plugins")
        self.patch(twisted.plugins, "__path__",
                   [here] + [p for p in twisted.plugins.__path__ if p != here])
        name = "twisted.plugins.vmqtw_plugin"
        saved = sys.modules.pop(name, None)

        def restore() -> None:
            sys.modules.pop(name, None)
            if saved is not None:
                sys.modules[name] = saved

        self.addCleanup(restore)
        e = endpoints.serverFromString(MemoryReactorClock(),
                                       "proxy:tcp:1883:interface=127.0.0.1")
        self.assertIsInstance(e, ProxyServerEndpoint)
        self.assertEqual((e.wrapped._port, e.wrapped._interface), (1883, "127.0.0.1"))


class LimitedEndpointTests(TestCase):
    """LimitedServerEndpoint builds the pinned-accept ports (real sockets on
    the loopback, closed by each test)."""

    def listen(self, endpoint: Any) -> Any:
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Recorder)))
        self.addCleanup(port.stopListening)
        return port

    def test_tcp_port_is_pinned(self) -> None:
        """A tcp endpoint listens on a LimitedTCPPort that accepts at most the
        batch, and never more than the room left."""
        endpoint = LimitedServerEndpoint(
            endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), 3, 20, reactor)
        port = self.listen(endpoint)
        self.assertIsInstance(port, LimitedTCPPort)
        self.assertIs(endpoint.limiter.port, port)
        self.assertIs(port.factory, endpoint.limiter)
        self.assertEqual((port.accept_batch, port.numberAccepts), (20, 3))
        self.assertEqual(port.getHost().host, "127.0.0.1")

    def test_description_endpoints_are_pinned_too(self) -> None:
        """tcp: and unix: descriptions get the same limited ports."""
        port = self.listen(LimitedServerEndpoint(
            endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1"), None, 30))
        self.assertIsInstance(port, LimitedTCPPort)
        self.assertEqual(port.numberAccepts, 30)
        path = os.path.join(self.mktemp() + "-d", "s")
        os.makedirs(os.path.dirname(path))
        port = self.listen(LimitedServerEndpoint(
            endpoints.serverFromString(reactor, f"unix:{path}"), None, 30))
        self.assertIsInstance(port, LimitedUNIXPort)

    def test_adopted_socket_is_pinned(self) -> None:
        """An inherited (adopted) socket becomes a LimitedTCPPort; the
        endpoint closes its own descriptor (the port holds a duplicate)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        fd = os.dup(sock.fileno())
        sock.close()
        adopted = endpoints.AdoptedStreamServerEndpoint(reactor, fd, socket.AF_INET)
        closed: list[int] = []
        adopted._close = lambda n: (closed.append(n), os.close(n))  # type: ignore[method-assign]
        port = self.listen(LimitedServerEndpoint(adopted, 2, 10, reactor))
        self.assertIsInstance(port, LimitedTCPPort)
        self.assertEqual(port.numberAccepts, 2)
        self.assertEqual(closed, [fd])
        self.assertNotEqual(port.fileno(), fd)

    def test_adopted_unix_socket_file_stays(self) -> None:
        """An inherited unix socket is limited too, and closing the port leaves
        its file alone (systemd made it and listens on it again)."""
        path = os.path.join(self.mktemp() + "-d", "s")
        os.makedirs(os.path.dirname(path))
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen(5)
        fd = os.dup(sock.fileno())
        sock.close()
        endpoint = LimitedServerEndpoint(
            endpoints.AdoptedStreamServerEndpoint(reactor, fd, socket.AF_UNIX), 1, 10, reactor)
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Recorder)))
        self.assertIsInstance(port, LimitedUNIXPort)
        self.assertEqual(port.numberAccepts, 1)
        d = port.stopListening()
        d.addCallback(lambda _: self.assertTrue(os.path.exists(path),
                                                "the inherited socket file was removed"))
        return d

    def test_other_endpoints_still_get_the_cap(self) -> None:
        """An endpoint we cannot build ports for listens with the limiter as
        its factory, so max_connections still holds."""
        class Fake:
            def listen(self, factory: Any) -> Any:
                self.factory = factory
                return succeed("port")

        fake = Fake()
        endpoint = LimitedServerEndpoint(fake, 1)
        self.assertEqual(self.successResultOf(endpoint.listen(Factory())), "port")
        self.assertIs(fake.factory, endpoint.limiter)
        self.assertEqual(endpoint.limiter.port, "port")


class TwistedInternalsTests(SynchronousTestCase):
    """The private Twisted attributes vmqtw.transport.limits relies on.

    If one of these fails after a Twisted upgrade, max_connections and the
    accept batch (nr_of_acceptors) no longer work as documented, or socket
    activation under twistd loses its sockets: adapt
    ``vmqtw/transport/limits.py`` (and ``activation.py``) before anything else.
    """

    def assertHas(self, obj: Any, names: list[str], where: str) -> None:
        missing = [n for n in names if not hasattr(obj, n)]
        if missing:
            self.fail(f"Twisted upgrade: {where} no longer has {', '.join(missing)}; "
                      f"vmqtw.transport.limits relies on it for max_connections and "
                      f"nr_of_acceptors")

    def test_port_internals(self) -> None:
        """tcp.Port/unix.Port: the accept loop size, reading control, adoption."""
        port = tcp.Port(0, Factory())
        self.assertHas(port, ["startReading", "stopReading", "doRead", "connectionLost",
                              "_preexistingSocket"], "tcp.Port")
        self.assertHas(tcp.Port, ["_fromListeningDescriptor"], "tcp.Port")
        self.assertHas(unix.Port, ["_fromListeningDescriptor"], "unix.Port")
        self.assertIs(unix.Port.doRead, tcp.Port.doRead,
                      "Twisted upgrade: unix.Port has its own accept loop; check that "
                      "vmqtw.transport.limits still caps it")
        for method in (tcp.Port.doRead, tcp.Port.startListening):
            self.assertIn("numberAccepts", method.__code__.co_names,
                          f"Twisted upgrade: tcp.Port.{method.__name__} no longer uses "
                          f"numberAccepts; vmqtw.transport.limits pins it to cap each "
                          f"accept batch (max_connections, nr_of_acceptors)")

    def test_endpoint_internals(self) -> None:
        """The private fields of Twisted's server endpoints."""
        memory = MemoryReactorClock()
        self.assertHas(endpoints.TCP4ServerEndpoint(memory, 1),
                       ["_port", "_backlog", "_interface", "_reactor"], "TCP4ServerEndpoint")
        self.assertTrue(issubclass(endpoints.TCP6ServerEndpoint, endpoints._TCPServerEndpoint))
        self.assertHas(endpoints.UNIXServerEndpoint(memory, "/x"),
                       ["_address", "_backlog", "_mode", "_wantPID", "_reactor"],
                       "UNIXServerEndpoint")
        self.assertHas(endpoints._SystemdParser._sddaemon,
                       ["inheritedDescriptors", "inheritedNamedDescriptors"],
                       "endpoints._SystemdParser._sddaemon (used by vmqtw.transport.activation)")
        self.assertHas(endpoints.AdoptedStreamServerEndpoint(memory, 3, socket.AF_INET),
                       ["fileno", "addressFamily", "reactor", "_used", "_close",
                        "_setNonBlocking"], "AdoptedStreamServerEndpoint")
