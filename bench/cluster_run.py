#!/usr/bin/env python3
"""A 2-process vmqtw cluster on this machine against one vmqtw process, same load.

    python3 bench/cluster_run.py               # 3 runs of each scenario (medians)
    python3 bench/cluster_run.py --quick       # one short run of each
    python3 bench/cluster_run.py --scenario fanin_qos0 --repeat 5
    python3 bench/cluster_run.py --scenario fanin_qos0 --py-spy   # where the nodes' CPU goes

Everything runs on 127.0.0.1: a throw-away ``redis-server`` (no persistence), two
``python -m vmqtw`` nodes (``metadata_plugin = redis``, ``listener.vmq`` on a free port)
and the C load generator of ``bench/run.py``, whose publishers connect to node 1 and
whose subscribers connect to node 2 (``--sub-port``): every message crosses the vmq
link. The single-process baseline is the same broker configuration without the cluster
keys, publishers and subscribers on the one process.

Scenarios (the loads of ``bench/run.py``):

- ``fanin_qos0``: 50 publishers -> 1 subscriber on ``bench/#``, QoS 0;
- ``fanin_spread``: the same load with the odd-numbered publishers on node 2 too
  (loadgen ``--pub-port2``): half the messages cross the link, as with ``--workers``
  spreading clients (the single process gets the same load as ``fanin_qos0``);
- ``qos0_1to1``: 1 publisher -> 1 subscriber, QoS 0;
- ``latency_2k``: 1 -> 1 at 2,000 msg/s, QoS 0: end-to-end p50/p99 (cross-node for
  the cluster).

The CPU figure of the cluster is the sum of both nodes over the measurement window;
``cpu_us/msg`` is broker CPU time per message (less noisy than the rate on a loaded
machine), also per node. ``--py-spy`` samples both nodes with py-spy (``pip install
py-spy``; it must be allowed to ptrace them) and prints the share of each node's CPU
spent in the vmq link path (encode, send, read, decode, deliver), in µs per message.
Logs and configs go to ``bench/build/cluster/`` (git-ignored). Standard library only
(plus ``redis-server`` on the PATH).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # bench/run.py: load generator, broker processes, one run

WORKDIR = R.BUILD / "cluster"
COOKIE = "bench-cookie"
#: A fake pid that stands for "every node of the cluster" in ``R.cpu_ticks``.
CLUSTER_PID = -4242


#: The scenario whose publishers are spread over both nodes (the subscriber on node 2).
SPREAD = "fanin_spread"


def scenarios(quick: bool) -> list[R.Scenario]:
    by_name = {s.name: s for s in R.scenarios(quick)}
    spread = dataclasses.replace(
        by_name["fanin_qos0"], name=SPREAD,
        describe="QoS 0, 50 -> 1 on bench/#, half the publishers on each node")
    return [by_name["fanin_qos0"], spread, by_name["qos0_1to1"], by_name["latency_2k"]]


# -- processes -----------------------------------------------------------------------

class Redis:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            sys.exit("cluster_run.py: redis-server is not installed (apt-get install "
                     "redis-server)")
        self.port = R.free_port()
        self.log = open(workdir / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", R.HOST, "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((R.HOST, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


def node_options(name: str, redis_port: int) -> list[str]:
    return [f"nodename={name}@127.0.0.1", f"distributed_cookie={COOKIE}",
            "metadata_plugin=redis", f"metadata.redis.url=redis://{R.HOST}:{redis_port}/0",
            f"listener.vmq.clustering={R.HOST}:0"]


def connack_code(port: int) -> int | None:
    """The CONNACK return code a clean 3.1.1 CONNECT gets from ``port`` (None: none)."""
    cid = b"bench-ready"
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    try:
        with socket.create_connection((R.HOST, port), timeout=1.0) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            reply = s.recv(4)
    except OSError:
        return None
    return reply[3] if len(reply) == 4 and reply[0] == 0x20 else None


def wait_ready(nodes: list[R.Vmqtw], timeout: float = 30.0) -> None:
    """Until every node accepts a CONNECT (a node refuses them, "server unavailable",
    until it has joined and its links to the others are up)."""
    deadline = time.monotonic() + timeout
    for node in nodes:
        while connack_code(node.port) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node on port {node.port} not ready within "
                                   f"{timeout:.0f} s\n{R.tail(node.log)}")
            time.sleep(0.1)


class Cluster:
    """What ``R.run_once`` needs of a broker, for two nodes: publishers go to node 1;
    the scenario's arguments send subscribers to node 2."""

    name = "cluster"

    def __init__(self, nodes: list[R.Vmqtw], tag: str) -> None:
        self.nodes = nodes
        self.port = nodes[0].port
        self.workdir = nodes[0].workdir
        self.tag = tag
        self.pid = CLUSTER_PID
        self.proc = nodes[0].proc

    def alive(self) -> bool:
        return all(n.alive() for n in self.nodes)


_cpu_ticks = R.cpu_ticks
_current: list[Cluster] = []


def cpu_ticks(pid: int) -> int | None:
    """``R.cpu_ticks``, where :data:`CLUSTER_PID` sums every node of the cluster."""
    if pid != CLUSTER_PID:
        return _cpu_ticks(pid)
    ticks = [_cpu_ticks(n.pid) for n in _current[0].nodes]
    return None if None in ticks else sum(t for t in ticks if t is not None)


R.cpu_ticks = cpu_ticks

#: (monotonic time, ticks of each node) at each measurement mark of the current run.
_node_marks: list[tuple[float, list[int | None]]] = []
#: The kernel's share of those ticks (``stime``), at the same marks.
_sys_marks: list[list[int | None]] = []


def sys_ticks(pid: int) -> int | None:
    """The CPU ticks ``pid`` spent in the kernel (``stime`` of ``/proc/PID/stat``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[12])
    except (OSError, IndexError, ValueError):
        return None


def _cpu_ticks_marked(pid: int) -> int | None:
    if pid == CLUSTER_PID and _current:
        nodes = _current[0].nodes
        _node_marks.append((time.monotonic(), [_cpu_ticks(n.pid) for n in nodes]))
        _sys_marks.append([sys_ticks(n.pid) for n in nodes])
    return cpu_ticks(pid)


R.cpu_ticks = _cpu_ticks_marked


def node_cpu_pct() -> list[float | None]:
    """Each node's CPU (% of a core) between the first and last mark of the run."""
    if len(_node_marks) < 2:
        return []
    (t0, a), (t1, b) = _node_marks[0], _node_marks[-1]
    wall = max(t1 - t0, 1e-6)
    return [None if x is None or y is None else round(100.0 * (y - x) / R.CLK_TCK / wall, 1)
            for x, y in zip(a, b, strict=True)]


def node_sys_share() -> list[float | None]:
    """The kernel's share of each node's CPU between the first and last mark."""
    if len(_node_marks) < 2 or len(_sys_marks) < 2:
        return []
    out: list[float | None] = []
    for a, b, sa, sb in zip(_node_marks[0][1], _node_marks[-1][1], _sys_marks[0],
                            _sys_marks[-1], strict=True):
        if a is None or b is None or sa is None or sb is None or b == a:
            out.append(None)
        else:
            out.append(round((sb - sa) / (b - a), 2))
    return out


def us_per_msg(cpu_pct: float | None, rate: float | None) -> float | None:
    """CPU microseconds per message from a CPU share (% of a core) and a rate (msg/s)."""
    if not cpu_pct or not rate:
        return None
    return round(cpu_pct / 100.0 / rate * 1e6, 2)


# -- py-spy ------------------------------------------------------------------------------

#: Link-path functions (py-spy frame name, source file) -> label, per node.
LINK_PATH = {
    "node 1": [("NetsplitGate.publish", "cluster/netsplit.py",
                "netsplit gate + authorizer (per PUBLISH)"),
               ("ClusterRouter.publish", "cluster/router.py", "ClusterRouter.publish (all)"),
               ("link_bytes", "cluster/router.py", "  link_bytes (message -> record)"),
               ("to_record", "cluster/router.py", "  to_record"),
               ("encode_record", "cluster/codec.py", "  encode_record"),
               ("PeerLink.send", "cluster/link.py", "  PeerLink.send"),
               ("PeerLink.send_encoded", "cluster/link.py", "  PeerLink.send_encoded"),
               ("PeerLink.flush", "cluster/link.py", "PeerLink.flush (frames)"),
               ("FileDescriptor.doWrite", "internet/abstract.py", "socket writes (link)")],
    "node 2": [("LinkServerProtocol.dataReceived", "cluster/link.py", "link read (all)"),
               ("FrameDecoder.feed", "cluster/codec.py", "  FrameDecoder.feed"),
               ("decode_batch", "cluster/codec.py", "  decode_batch"),
               ("ClusterRouter.deliver", "cluster/router.py", "  ClusterRouter.deliver"),
               ("from_record", "cluster/router.py", "    from_record"),
               ("Broker.publish", "core/broker.py", "    Broker.publish (match + queue)"),
               ("Broker.flush", "core/broker.py", "    Broker.flush (to the subscriber)")],
}


def start_py_spy(nodes: list[R.Vmqtw], tag: str) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """py-spy on each of ``nodes`` (profiles ``TAG-nI.pyspy.txt``; a single process is
    node 1 of its tag)."""
    exe = shutil.which("py-spy") or str(Path.home() / ".local/bin/py-spy")
    spies = []
    for i, node in enumerate(nodes, 1):
        out = WORKDIR / f"{tag}-n{i}.pyspy.txt"
        proc = subprocess.Popen([exe, "record", "--pid", str(node.pid), "--rate", "200",
                                 "--format", "raw", "--output", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((proc, out))
    return spies


def stop_py_spy(spies: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    import signal
    for proc, _ in spies:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc, _ in spies:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def link_shares(path: Path, which: str) -> tuple[int, dict[str, float]]:
    """(samples, label -> share of the node's samples) from a py-spy raw profile: a
    function counts once per stack it is in (inclusive)."""
    total = 0
    hits = dict.fromkeys((label for *_, label in LINK_PATH[which]), 0)
    if not path.exists():
        return 0, {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for name, file, label in LINK_PATH[which]:
            if any(f.split(" (", 1)[0] == name and file in f for f in frames):
                hits[label] += n
    return total, {k: v / total for k, v in hits.items()} if total else {}


def top_frames(path: Path, top: int = 12) -> list[tuple[float, str]]:
    """The ``top`` frames of a py-spy raw profile by own (self) samples, as (share of
    the process's samples, frame)."""
    own: dict[str, int] = {}
    total = 0
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return [(n / total, frame) for frame, n in ranked] if total else []


def print_top(path: Path, title: str, us: float | None, top: int = 12) -> None:
    print(f"  py-spy {title}: top frames by own samples ({us} us CPU/msg)")
    for share, frame in top_frames(path, top):
        cost = f"{share * us:.2f} us/msg" if us else "?"
        print(f"    {100 * share:5.1f}%  {cost:>12}  {frame}")


def print_link_costs(tag: str, per_node_us: list[float | None]) -> None:
    for i, which in ((1, "node 1"), (2, "node 2")):
        samples, shares = link_shares(WORKDIR / f"{tag}-n{i}.pyspy.txt", which)
        us = per_node_us[i - 1] if len(per_node_us) >= i else None
        print(f"  py-spy {which} ({'publishers' if i == 1 else 'subscriber'}): {samples} "
              f"samples, {us} us CPU/msg")
        for label, share in shares.items():
            cost = f"{share * us:.2f} us/msg" if us else "?"
            print(f"    {label:<44} {100 * share:5.1f}%  {cost}")
        print_top(WORKDIR / f"{tag}-n{i}.pyspy.txt", which, us)


def one_run(sc: R.Scenario, kind: str, tag: str, quick: bool,
            profile: bool = False, py_spy: bool = False) -> R.Run:
    """A fresh single process or cluster (and Redis), one load generator run; every
    process stopped afterwards."""
    procs: list[Any] = []
    try:
        if kind == "single":
            broker = R.Vmqtw(WORKDIR, tag, ["persistent_store.enabled=off"], None)
            procs.append(broker)
            broker.start()
            spies = start_py_spy([broker], tag) if py_spy else []
            try:
                return R.run_once(sc, broker, R.budget_for(sc, quick))
            finally:
                stop_py_spy(spies)
        redis = Redis(WORKDIR)
        procs.append(redis)
        nodes = []
        for i in (1, 2):
            prof = WORKDIR / f"{tag}-n{i}.prof" if profile else None
            node = R.Vmqtw(WORKDIR, f"{tag}-n{i}", ["persistent_store.enabled=off"]
                           + node_options(f"bench{i}", redis.port), prof)
            procs.append(node)
            node.start()
            nodes.append(node)
        wait_ready(nodes)
        cluster = Cluster(nodes, tag)
        _current[:] = [cluster]
        _node_marks.clear()
        _sys_marks.clear()
        extra = ["--sub-port", str(nodes[1].port)]
        if sc.name == SPREAD:
            extra += ["--pub-port2", str(nodes[1].port)]
        cross = dataclasses.replace(sc, args=sc.args + extra)
        spies = start_py_spy(nodes, tag) if py_spy else []
        try:
            run = R.run_once(cross, cluster, R.budget_for(sc, quick))  # type: ignore[arg-type]
        finally:
            stop_py_spy(spies)
        run.extra["node_cpu_pct"] = node_cpu_pct()
        run.extra["node_sys_share"] = node_sys_share()
        return run
    except Exception as e:
        return R.Run(ok=False, error=str(e))
    finally:
        for p in reversed(procs):
            p.stop()


def median(runs: list[R.Run], key: str) -> float | None:
    vals = [r.extra.get(key) if key != "broker_cpu" else r.broker_cpu for r in runs if r.ok]
    nums = [float(v) for v in vals if v is not None]
    return statistics.median(nums) if nums else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, one each")
    ap.add_argument("--repeat", type=int, default=None, help="runs per scenario (3)")
    ap.add_argument("--scenario", action="append", help="only these scenarios")
    ap.add_argument("--profile", action="store_true",
                    help="the cluster's nodes under cProfile; top functions of each")
    ap.add_argument("--py-spy", action="store_true",
                    help="sample both nodes with py-spy: the vmq link's share per message")
    ap.add_argument("--vmqtw-tree", default=None,
                    help="measure the vmqtw package of this checkout (before/after runs)")
    ap.add_argument("--wait-quiet", type=float, default=10.0,
                    help="wait up to S seconds for a quiet machine before each run")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    if args.vmqtw_tree:
        R.VMQTW_TREE = Path(args.vmqtw_tree).resolve()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    R.build_loadgen()
    print(f"# {R.machine()}\n# revision {R.git_revision()}", flush=True)
    results: dict[str, Any] = {}
    for sc in scenarios(args.quick):
        if args.scenario and sc.name not in args.scenario:
            continue
        runs: dict[str, list[R.Run]] = {"single": [], "cluster": []}
        for rep in range(repeat):
            for kind in ("single", "cluster"):
                busy = R.wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
                tag = f"{sc.name}-{kind}-{rep}"
                run = one_run(sc, kind, tag, args.quick, args.profile, args.py_spy)
                rate = run.value if sc.mode != "latency" else None
                run.extra["cpu_us_per_msg"] = us_per_msg(run.broker_cpu, rate)
                nodes_us = [us_per_msg(c, rate) for c in run.extra.get("node_cpu_pct", [])]
                if args.py_spy and kind == "cluster" and rate:
                    print_link_costs(tag, nodes_us)
                elif args.py_spy and rate:
                    print_top(WORKDIR / f"{tag}-n1.pyspy.txt", "one process",
                              run.extra.get("cpu_us_per_msg"))
                if args.profile and kind == "cluster":
                    for i in (1, 2):
                        path = WORKDIR / f"{tag}-n{i}.prof"
                        if path.exists():
                            R.print_profile(path, f"{sc.name} node {i}", 25)
                if busy is not None:
                    run.extra["machine_busy_before_pct"] = round(busy, 1)
                runs[kind].append(run)
                value = run.extra.get("p50_us") if sc.mode == "latency" else run.value
                print(f"  [{sc.name} #{rep + 1} {kind}] ok={run.ok} value={value} "
                      f"p99={run.extra.get('p99_us')} cpu={run.broker_cpu} "
                      f"other={run.extra.get('other_cpu_pct')} "
                      f"busy_before={run.extra.get('machine_busy_before_pct')} "
                      f"cpu_us/msg={run.extra.get('cpu_us_per_msg')}"
                      + (f" per node={nodes_us} kernel share={run.extra.get('node_sys_share')}"
                         if kind == "cluster" and rate else "")
                      + (f" ERROR {run.error}" if run.error else ""), flush=True)
        row: dict[str, Any] = {}
        for kind, rs in runs.items():
            keys = ("p50_us", "p99_us") if sc.mode == "latency" else ("rate",)
            row[kind] = {k: median(rs, k) for k in keys + ("broker_cpu", "other_cpu_pct",
                                                             "cpu_us_per_msg")}
            row[kind]["ok_runs"] = sum(r.ok for r in rs)
        if sc.mode == "latency":
            s, c = row["single"], row["cluster"]
            print(f"{sc.name}: single p50/p99={s['p50_us']}/{s['p99_us']} us  cluster "
                  f"(cross-node) p50/p99={c['p50_us']}/{c['p99_us']} us", flush=True)
        else:
            s, c = row["single"]["rate"], row["cluster"]["rate"]
            ratio = c / s if s and c else None
            row["ratio"] = ratio
            print(f"{sc.name}: single={R.fmt_num(s, sc.unit)} cluster={R.fmt_num(c, sc.unit)} "
                  f"ratio={ratio and round(ratio, 2)}  cpu single="
                  f"{R.pct(row['single']['broker_cpu'])} cluster="
                  f"{R.pct(row['cluster']['broker_cpu'])}  cpu us/msg single="
                  f"{row['single']['cpu_us_per_msg']} cluster="
                  f"{row['cluster']['cpu_us_per_msg']}", flush=True)
        results[sc.name] = row
    (WORKDIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
