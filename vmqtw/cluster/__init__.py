"""The cluster's building blocks: the vmq link between nodes and the shared metadata.

- :mod:`vmqtw.cluster.codec`: the vmq link's wire format (sans-IO).
- :mod:`vmqtw.cluster.handshake`: the cookie handshake as two sans-IO state machines.
- :mod:`vmqtw.cluster.link`: Twisted protocols for the link (server side and one
  outgoing, buffered, reconnecting connection per peer).
- :mod:`vmqtw.cluster.metadata`: ``IMetadata``, what nodes share (membership, routes,
  client-id registry, retained messages, persistent-session subscriptions).
- :mod:`vmqtw.cluster.redis_metadata`: ``IMetadata`` on Redis.

Wire compatibility with VerneMQ nodes is a non-goal: VerneMQ's link carries Erlang
terms and needs Erlang distribution besides.
"""
