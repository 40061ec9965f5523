"""An endpoint that wraps the factory it listens with (the PROXY and TLS layers)."""
from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["WrappingServerEndpoint"]


@implementer(IStreamServerEndpoint)
class WrappingServerEndpoint:
    """Listens on ``wrapped`` with the given factory wrapped by ``wrap``.

    ``factory`` is the wrapping factory the last ``listen`` built (None before).
    """

    def __init__(self, wrapped: IStreamServerEndpoint,
                 wrap: Callable[[IProtocolFactory], IProtocolFactory]) -> None:
        self.wrapped = wrapped
        self._wrap = wrap
        self.factory: IProtocolFactory | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        self.factory = self._wrap(protocolFactory)
        return self.wrapped.listen(self.factory)
