"""``vmq-admin cluster show|join|leave`` (VerneMQ's syntax).

Redis is the rendezvous of a vmqtw cluster: a node with ``metadata_plugin = redis`` is
a member as soon as it starts, so there is no seed node to join. The commands therefore
mean:

- ``cluster show``: VerneMQ's ``Node`` / ``Running`` table of every member this node
  knows (:meth:`vmqtw.cluster.monitor.ClusterMonitor.rows`). A single node (no metadata
  engine) shows itself.
- ``cluster join discovery-node=NODE``: checks that ``NODE`` is a live member of the
  cluster this node reaches through its metadata engine (the same Redis and
  ``cluster.name``), and makes this node a member again if it had left with
  ``cluster leave``. Nothing else to do for a running member: ``Done``.
- ``cluster leave node=NODE``: run on ``NODE`` itself, it makes the node leave
  (:meth:`vmqtw.cluster.node.ClusterNode.leave`: its MQTT listeners stop accepting, its
  clients are disconnected, its offline sessions move to the other members, then it
  leaves the membership); the console shows progress every ``--summary-interval``
  seconds and gives up waiting after ``--timeout`` seconds. ``NODE`` another node that
  is still running is refused (run the command on that node: vmqtw has no remote
  control channel between nodes); ``NODE`` a member that expired (it crashed) removes it
  from the table.
"""
from __future__ import annotations

from typing import Any, Callable

from vmqtw.admin import output as out
from vmqtw.admin.commands import COMMANDS, Admin, CommandError, command
from vmqtw.admin.listeners import MQTT_KINDS
from vmqtw.admin.parse import Flag, Parsed, UsageError, int_value
from vmqtw.logs import Logger

admin_log = Logger(namespace="vmqtw.admin")

#: The error for ``join`` / ``leave`` on a broker without a metadata engine.
NO_CLUSTER = ("clustering needs metadata_plugin = redis (and a listener.vmq): this "
              "broker is a single node")


def _node(admin: Admin) -> Any:
    node = getattr(admin, "cluster", None)
    if node is None:
        raise CommandError(f"Couldn't run the command: {NO_CLUSTER}")
    return node


def _required(p: Parsed, key: str, words: str) -> str:
    value = p.args.get(key)
    if not value:
        raise UsageError(f"Missing argument: {key}", COMMANDS[tuple(words.split())].usage)
    return value


@command("cluster show", "cluster show")
def cluster_show(admin: Admin, p: Parsed) -> list[out.Element]:
    node = getattr(admin, "cluster", None)
    if node is None:
        return [out.Table([{"Node": admin.node, "Running": True}])]
    return [out.Table([{"Node": name, "Running": running}
                       for name, running in node.monitor.rows()])]


@command("cluster join", "cluster join discovery-node=<Node>", keys=("discovery-node",))
def cluster_join(admin: Admin, p: Parsed) -> list[out.Element]:
    name = _required(p, "discovery-node", "cluster join")
    node = _node(admin)
    meta = node.metadata
    me = node.cluster.nodename
    if name == me:
        raise CommandError(f"Couldn't join cluster due to self_join: {name} is this node; "
                           f"name a member of the cluster to join")
    members = sorted(meta.members())
    if name not in members:
        where = getattr(meta, "server", "the metadata engine")
        if not node.joined and not node.monitor.left:
            raise CommandError(f"Couldn't join cluster due to metadata_unavailable: this "
                               f"node has not reached {where} yet")
        raise CommandError(
            f"Couldn't join cluster due to not_reachable: {name} is not a live member of "
            f"cluster '{node.cluster.name}' on {where} (members: "
            f"{', '.join(m for m in members if m != me) or 'none'})")
    if not node.monitor.left:
        return [out.Text("Done")]
    return _wait(admin, node.monitor.rejoin(), lambda _: _rejoined(admin, node),
                 "cluster join", f"Joining cluster '{node.cluster.name}' again", 5, 60)


def _rejoined(admin: Admin, node: Any) -> tuple[int, str]:
    """After a rejoin: resume the MQTT listeners that ``leave`` stopped."""
    failed = []
    controller = admin.listeners
    for name in node.monitor.resume_listeners:
        try:
            if controller is not None:
                controller.restart_named(name)
        except Exception as e:
            failed.append(f"listener {name} not resumed: {e}")
    node.monitor.resume_listeners = []
    return (1, "\n".join(failed)) if failed else (0, "Done")


@command("cluster leave", "cluster leave node=<Node> [-k|--kill_sessions] "
         "[-i|--summary-interval=<Seconds>] [-t|--timeout=<Seconds>]", keys=("node",),
         flags=(Flag("kill_sessions", "k"), Flag("summary-interval", "i", True),
                Flag("timeout", "t", True)))
def cluster_leave(admin: Admin, p: Parsed) -> list[out.Element]:
    usage = COMMANDS[("cluster", "leave")].usage
    name = _required(p, "node", "cluster leave")
    interval = int_value(p.flag("summary-interval", "5"), "--summary-interval", usage, 1)
    timeout = int_value(p.flag("timeout", "60"), "--timeout", usage, 1)
    node = _node(admin)
    me = node.cluster.nodename
    monitor = node.monitor
    if name != me:
        if monitor.forget(name):
            return [out.Text("Done")]
        if name in node.metadata.members():
            raise CommandError(f"Couldn't leave cluster: {name} is running; run "
                               f"cluster leave node={name} on {name} itself")
        raise CommandError(f"Couldn't leave cluster: {name} is not a member of the cluster")
    if monitor.left:
        raise CommandError(f"Couldn't leave cluster: {me} has already left")
    if admin.console is None:
        raise CommandError("cluster leave needs the vmq-admin console (the admin socket)")
    controller = admin.listeners
    rows = controller.rows() if controller is not None else []
    monitor.resume_listeners = [r["name"] for r in rows
                                if r.get("kind") in MQTT_KINDS and r["status"] == "running"]

    def finished(report: Any) -> tuple[int, str]:
        monitor.left = True
        errors = list(getattr(report, "errors", None) or [])
        text = (f"Done: {me} left the cluster; moved {getattr(report, 'sessions_moved', 0)} "
                f"offline sessions with {getattr(report, 'messages_moved', 0)} messages")
        return (1 if errors else 0, "\n".join([text, *map(str, errors)]))

    return _wait(admin, node.leave(), finished, "cluster leave",
                 f"Leaving the cluster: {me} stops accepting MQTT connections and moves its "
                 f"offline sessions to the other members", interval, timeout)


def _wait(admin: Admin, d: Any, finished: Callable[[Any], tuple[int, str]], what: str,
          opening: str, interval: int, timeout: int) -> list[out.Element]:
    """Wait for ``d`` on the console: a progress line every ``interval`` seconds, at most
    ``timeout`` seconds. A ``d`` that already fired answers at once."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if outcome:
        code, text = _result(outcome[0], finished, what)
        if code:
            raise CommandError(text)
        return [out.Text(text)]
    console = admin.console
    if console is None:
        raise CommandError(f"{what} needs the vmq-admin console (the admin socket)")
    from twisted.internet import reactor
    from twisted.internet.task import LoopingCall
    clock = getattr(admin.cluster, "reactor", None) or reactor
    started = clock.seconds()

    def progress() -> None:
        console.write(f"{what}: still waiting after {clock.seconds() - started:.0f}s")

    ticker = LoopingCall(progress)
    ticker.clock = clock
    ticker.start(interval, now=False)

    def stop_waiting(code: int, text: str) -> None:
        if ticker.running:
            ticker.stop()
        if deadline.active():
            deadline.cancel()
        console.write(text)
        console.end(code)

    def gave_up() -> None:
        if ticker.running:
            ticker.stop()
        console.write(f"{what}: not finished after {timeout}s; it goes on in the broker "
                      f"(see its log)")
        console.end(1)

    deadline = clock.callLater(timeout, gave_up)

    def done(result: Any) -> None:
        if not deadline.active():
            return  # gave up already; the log has the outcome
        stop_waiting(*_result(result, finished, what))
    d.addCallback(lambda _: done(outcome[0]))
    admin._streaming = True
    return [out.Text(opening)]


def _result(result: Any, finished: Callable[[Any], tuple[int, str]],
            what: str) -> tuple[int, str]:
    from twisted.python.failure import Failure
    if isinstance(result, Failure):
        admin_log.failure(f"{what} failed", result)
        return 1, f"Couldn't complete {what}: {result.getErrorMessage()}"
    try:
        return finished(result)
    except Exception as e:  # never into the reactor
        return 1, f"Couldn't complete {what}: {e}"
