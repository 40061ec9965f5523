"""
VerneMQ keys that vmqtw accepts without giving them (all of) their meaning.

A VerneMQ operator starts vmqtw with the ``vernemq.conf`` they already run.
Every key of VerneMQ's ``vmq_server.schema`` and of the plugins vmqtw ships is
either honoured with VerneMQ's meaning (``vmqtw.config.schema``), or listed
here: accepted, checked where a check is cheap, and reported once at startup
as a ``ConfigWarning`` that names the key and says why it has no effect.  A
key VerneMQ does not know stays an error.

Two tables:

- ``NO_EFFECT``: exact keys, with their value parser and the reason;
- ``NO_EFFECT_PREFIXES``: whole families (``erlang.*``, ``leveldb.*``...) whose
  keys are many and only mean something to the Erlang runtime or to plugins
  vmqtw does not ship (values are not checked);

plus ``LISTENER_NO_EFFECT`` for listener options.

The README's "Migrating from VerneMQ" section lists the same keys.
"""

from __future__ import annotations

from typing import Mapping

from vmqtw.config.values import Validator, _bool, _int, _str

_CLUSTER = "vmqtw runs as a single node: there is no cluster"
_NETSPLIT = _CLUSTER + " and so no netsplit"
_ERLANG = "an Erlang/OTP runtime setting; vmqtw is a Python process"
_NOT_YET = "not implemented yet in vmqtw"

#: key -> (value parser, why it has no effect).
NO_EFFECT: dict[str, tuple[Validator, str]] = {
    "allow_register_during_netsplit": (_bool, _NETSPLIT),
    "allow_publish_during_netsplit": (_bool, _NETSPLIT),
    "allow_subscribe_during_netsplit": (_bool, _NETSPLIT),
    "allow_unsubscribe_during_netsplit": (_bool, _NETSPLIT),
    "coordinate_registrations": (_bool, _CLUSTER + ": a client id is registered once, "
                                 "in this process"),
    "nodename": (_str, _CLUSTER + " (the name only labels the metrics, $SYS topics and "
                 "status of this node)"),
    "distributed_cookie": (_str, _CLUSTER + " (no Erlang distribution cookie)"),
    "metadata_plugin": (_str, _CLUSTER + ": no replicated metadata store"),
    "max_drain_time": (_int(0), "a queue moving to another cluster node goes whole, "
                       "bounded by remote_enqueue_timeout (no drain steps)"),
    "max_msgs_per_drain_step": (_int(0), "a queue moving to another cluster node goes "
                                "whole, bounded by remote_enqueue_timeout (no drain steps)"),
    "outgoing_clustering_buffer_size": (_int(0), _CLUSTER),
    "queue_sup_sup_children": (_int(1), _ERLANG + " (queue supervisors)"),
    "queue_deliver_mode": (_str, "only meant for allow_multiple_sessions, removed in "
                           "VerneMQ 2.0"),
    "default_reg_view": (_str, _ERLANG + " (vmqtw has one routing table)"),
    "reg_views": (_str, _ERLANG + " (vmqtw has one routing table)"),
    "tcp_listen_options": (_str, _ERLANG + " (gen_tcp socket options)"),
    "accept_eula": (_str, "acknowledges the licence of VerneMQ's binary packages; "
                    "vmqtw is not covered by it"),
    "graphite_enabled": (_bool, "Graphite metrics reporting is " + _NOT_YET),
    "graphite_host": (_str, "Graphite metrics reporting is " + _NOT_YET),
    "graphite_port": (_int(0, 65535), "Graphite metrics reporting is " + _NOT_YET),
    "graphite_interval": (_int(0), "Graphite metrics reporting is " + _NOT_YET),
    "graphite_prefix": (_str, "Graphite metrics reporting is " + _NOT_YET),
    "graphite_api_key": (_str, "Graphite metrics reporting is " + _NOT_YET),
    "graphite_connect_timeout": (_int(0), "Graphite metrics reporting is " + _NOT_YET),
    "graphite_reconnect_timeout": (_int(0), "Graphite metrics reporting is " + _NOT_YET),
    "graphite_include_labels": (_bool, "Graphite metrics reporting is " + _NOT_YET),
    "expire_retain_cache": (_int(0), "vmqtw keeps no retained-message cache to expire "
                            "(an expired retained message is dropped when read)"),
    "log.console.rotation.compress_on_rotate": (_bool, "rotated logs are not "
                                                "compressed"),
    "log.error.rotation.compress_on_rotate": (_bool, "rotated logs are not compressed"),
}

#: (key prefix, why it has no effect); the values are not checked.
NO_EFFECT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("erlang.", _ERLANG),
    ("leveldb.", "VerneMQ's LevelDB message store; vmqtw stores sessions with "
                 "persistent_store.*"),
    ("vmq_generic_msg_store.", "VerneMQ's message store; vmqtw stores sessions with "
                               "persistent_store.*"),
    ("vmq_swc.", _CLUSTER + " (no SWC metadata replication)"),
    ("vmq_plumtree.", _CLUSTER + " (no Plumtree metadata replication)"),
    ("vmq_bcrypt.", "VerneMQ's bcrypt worker pool for vmq_diversity; vmqtw checks bcrypt "
                    "hashes in a thread with the Python bcrypt library"),
    ("log.crash", "the Erlang crash log; Python tracebacks go to the error log"),
)

#: Listener options with no effect in vmqtw: option -> reason.
LISTENER_NO_EFFECT: dict[str, str] = {
    "buffer_sizes": "socket buffer sizes are not set by vmqtw (the OS defaults apply)",
    "active_n": _ERLANG + " (Erlang's {active, N} socket mode)",
}


def prefix_reason(key: str) -> str | None:
    """The reason ``key`` is accepted without effect, if a prefix covers it."""
    for prefix, reason in NO_EFFECT_PREFIXES:
        if prefix.endswith("."):
            if key.startswith(prefix) and len(key) > len(prefix):
                return reason
        elif key == prefix or key.startswith(prefix + "."):
            return reason
    return None


def listener_warning(option: str, raw: str) -> str | None:
    """The warning for a listener option set to ``raw``, if it lacks effect."""
    return LISTENER_NO_EFFECT.get(option)


def all_keys() -> Mapping[str, str]:
    """Every exact key and prefix (``erlang.*``) without effect, with its reason
    (for the documentation and its test)."""
    out = {k: reason for k, (_, reason) in NO_EFFECT.items()}
    out.update({p + "*": reason for p, reason in NO_EFFECT_PREFIXES})
    out.update({f"listener.*.{k}": reason for k, reason in LISTENER_NO_EFFECT.items()})
    return out
