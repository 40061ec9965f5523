"""Posting hook bodies to endpoints: one connection pool per endpoint URL,
a receive deadline per request, TLS for https:// endpoints, and VerneMQ's
``cache-control: max-age`` cache of auth answers.
"""
from __future__ import annotations

import json
import re
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import defer, ssl
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived, readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from vmqtw.auth.webhooks.settings import Endpoint, TLSSettings, WebhookSettings

__all__ = ["Poster", "Cache", "WebhookFailure", "max_age"]

_MAX_AGE = re.compile(rb"max-age=(\d+)")

_TLS_MIN = {"tlsv1": "TLSv1_0", "tlsv1.1": "TLSv1_1", "tlsv1.2": "TLSv1_2", "tlsv1.3": "TLSv1_3"}


class WebhookFailure(Exception):
    """The endpoint gave no usable answer; the message is the reason
    (``timeout``, ``invalid_response_code 500``, a transport error)."""


def max_age(headers: Headers) -> int | None:
    """Seconds from a ``cache-control: ...max-age=N...`` header, if any."""
    for value in headers.getRawHeaders(b"cache-control", []):
        m = _MAX_AGE.search(value)
        if m:
            return int(m.group(1))
    return None


class Cache:
    """Auth answers by (endpoint, hook, the body without payload and peer port),
    valid while ``now <= inserted + max_age`` (whole seconds, as VerneMQ).
    Expired entries are dropped when looked up."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.entries: dict[tuple[str, str, str], tuple[int, Any]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(url: str, hook: str, body: dict[str, Any]) -> tuple[str, str, str]:
        rest = {k: v for k, v in body.items() if k not in ("payload", "peer_port")}
        return (url, hook, json.dumps(rest, separators=(",", ":")))

    def get(self, key: tuple[str, str, str]) -> Any:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        until, value = entry
        if int(self.clock.seconds()) > until:
            del self.entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: tuple[str, str, str], seconds: int, value: Any) -> None:
        self.entries[key] = (int(self.clock.seconds()) + seconds, value)

    def clear(self) -> None:
        self.entries.clear()


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """Client TLS for https:// endpoints from the vmq_webhooks TLS settings."""

    def __init__(self, tls: TLSSettings) -> None:
        self.tls = tls
        minimum = getattr(ssl.TLSVersion, _TLS_MIN[tls.version])
        client_cert = None
        if tls.certfile and tls.keyfile:
            with open(tls.certfile, "rb") as f:
                cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
            with open(tls.keyfile, "rb") as f:
                pw = tls.keyfile_password.encode() if tls.keyfile_password else None
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read(), pw)
            client_cert = ssl.PrivateCertificate.fromCertificateAndKeyPair(
                ssl.Certificate(cert), ssl.KeyPair(key))
        self.client_cert = client_cert
        self.minimum = minimum
        trust: Any = None
        if tls.cafile:
            with open(tls.cafile, "rb") as f:
                trust = ssl.trustRootFromCertificates(
                    [ssl.Certificate.loadPEM(c) for c in _pem_blocks(f.read())])
        self.trust = trust

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii")
        if not self.tls.verify_peer:
            return _Unverified(host, self.client_cert, self.minimum)
        extra: dict[str, Any] = {"raiseMinimumTo": self.minimum}
        return ssl.optionsForClientTLS(host, trustRoot=self.trust,
                                       clientCertificate=self.client_cert,
                                       extraCertificateOptions=extra)


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [part + end for part in data.split(end) if b"-----BEGIN" in part]


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """``verify_peer = off``: TLS without checking the server's certificate."""

    def __init__(self, host: str, client_cert: Any, minimum: Any) -> None:
        options = ssl.CertificateOptions(
            verify=False, raiseMinimumTo=minimum,
            **({"privateKey": client_cert.privateKey.original,
                "certificate": client_cert.original} if client_cert else {}))
        self.context = options.getContext()
        self.host = host.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.context, None)
        conn.set_app_data(tlsProtocol)
        conn.set_tlsext_host_name(self.host)
        conn.set_connect_state()
        return conn


@implementer(IBodyProducer)
class _Bytes:
    """A request body that is all there at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> "defer.Deferred[None]":
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Poster:
    """Sends bodies to endpoints and reads their answers."""

    def __init__(self, reactor: Any, settings: WebhookSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self.cache = Cache(reactor)
        self._agents: dict[str, tuple[Agent, HTTPConnectionPool, defer.DeferredSemaphore]] = {}
        self._policy: Any = None
        if any(e.url.startswith("https://") for e in settings.endpoints):
            # Read the TLS files now: a missing or broken one is a startup error.
            try:
                self._policy = _TLSPolicy(settings.tls)
            except (OSError, crypto.Error, ValueError) as e:
                raise ValueError(f"vmq_webhooks TLS settings: {e}") from None

    def _agent(self, url: str) -> tuple[Agent, defer.DeferredSemaphore]:
        """The Agent of one endpoint URL and the limit of its requests in flight
        (``pool_max_connections``; more wait their turn, within their timeout)."""
        found = self._agents.get(url)
        if found is not None:
            return found[0], found[2]
        pool = HTTPConnectionPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = self.settings.pool_max_connections
        pool.cachedConnectionTimeout = self.settings.pool_timeout  # type: ignore[assignment]  # Twisted annotates int; any number of seconds works
        pool.retryAutomatically = False  # a lost answer is a failure, not a second request
        if url.startswith("https://"):
            if self._policy is None:
                self._policy = _TLSPolicy(self.settings.tls)
            agent = Agent(self.reactor, contextFactory=self._policy, pool=pool)
        else:
            agent = Agent(self.reactor, pool=pool)
        limit = defer.DeferredSemaphore(self.settings.pool_max_connections)
        self._agents[url] = (agent, pool, limit)
        return agent, limit

    def post(self, endpoint: Endpoint,
             body: dict[str, Any]) -> "defer.Deferred[tuple[bytes, int | None]]":
        """POST ``body``; fires with (answer bytes, max-age or None), or fails
        with WebhookFailure.  Never takes longer than the endpoint's
        ``response_timeout``: the request is cancelled then."""
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        headers = Headers({b"content-type": [b"application/json"],
                           b"vernemq-hook": [endpoint.hook.encode("ascii")]})
        agent, limit = self._agent(endpoint.url)

        def send() -> "defer.Deferred[Any]":
            return agent.request(b"POST", endpoint.url.encode("utf-8"), headers,
                                 _Bytes(data)).addCallback(got_response)

        def got_response(response: Any) -> Any:
            if response.code != 200:
                # Read (and drop) the body so the connection can be reused.
                def refuse(_: Any) -> None:
                    raise WebhookFailure(f"invalid_response_code {response.code}")
                return readBody(response).addBoth(refuse)
            seconds = max_age(response.headers)
            return readBody(response).addCallback(lambda answer: (answer, seconds))

        d = limit.run(send)
        timed_out = []

        def time_out() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self.reactor.callLater(endpoint.response_timeout, time_out)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if timed_out:
                    raise WebhookFailure("timeout")
                if _was_cancelled(result):
                    raise defer.CancelledError()  # by the caller: not the endpoint's fault
            return result

        d.addBoth(done)
        d.addErrback(_failure_reason)
        return d

    def stop(self) -> "defer.Deferred[Any]":
        agents, self._agents = self._agents, {}
        return defer.gatherResults([pool.closeCachedConnections()
                                    for _, pool, _ in agents.values()])


def _was_cancelled(failure: Failure) -> bool:
    """A request failure that is a cancellation (the Agent wraps it)."""
    if failure.check(defer.CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return any(isinstance(r, Failure) and r.check(defer.CancelledError) for r in reasons)


def _failure_reason(failure: Failure) -> Any:
    if failure.check(WebhookFailure):
        return failure
    if failure.check(ConnectTimeout):
        raise WebhookFailure("timeout")
    if failure.check(defer.CancelledError):
        return failure  # the caller cancelled: not the endpoint's failure
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        inner = reasons[0].getErrorMessage() if reasons else ""
        raise WebhookFailure(f"{type(failure.value).__name__}: {inner}"[:200])
    text = str(failure.value) or type(failure.value).__name__
    raise WebhookFailure(f"{type(failure.value).__name__}: {text}"[:200])
