"""``vmqtw -c FILE --workers 2``: two cluster nodes behind one MQTT port (SO_REUSEPORT),
supervised; a real ``redis-server`` started by the test, paho clients on 127.0.0.1."""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from tests.support import TIMEOUT, MQTTv311, Paho, RunningProcess, in_thread, quiet_period
from tests.test_cluster_redis import RedisServer, free_port
from vmqtw.workers import worker_config, worker_nodename

START_TIMEOUT = 30.0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class WorkersTests(unittest.TestCase):

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write_config(self, port: int) -> str:
        path = os.path.join(self.dir, "w.conf")
        with open(path, "w") as f:
            f.write(f"allow_anonymous = on\n"
                    f"nodename = w@127.0.0.1\n"
                    f"distributed_cookie = s3cret\n"
                    f"metadata_plugin = redis\n"
                    f"metadata.redis.url = redis://127.0.0.1:{self.redis.port}\n"
                    f"cluster.heartbeat_interval = 200\n"
                    f"cluster.node_timeout = 1500\n"
                    f"listener.tcp.default = 127.0.0.1:{port}\n"
                    f"persistent_store.enabled = off\n"
                    f"listener.vmq.clustering = 127.0.0.1:0\n")
        return path

    def test_worker_config(self) -> None:
        """A worker's configuration: the node name gets ``-INDEX`` before the ``@``,
        a fixed vmq port is shifted by the index minus one, port 0 stays 0."""
        from vmqtw.config import parse
        base = ("nodename = vmq@10.0.0.1\nmetadata_plugin = redis\n"
                "listener.tcp.default = 127.0.0.1:1883\n")
        config = parse(base + "listener.vmq.clustering = 127.0.0.1:44053\n")
        second = worker_config(config, 2)
        self.assertEqual(second.cluster.nodename, "vmq-2@10.0.0.1")
        self.assertEqual([l.address.port for l in second.unserved_listeners], [44054])
        self.assertEqual([l.address.port for l in second.listeners],
                         [l.address.port for l in config.listeners])
        config = parse(base + "listener.vmq.clustering = 127.0.0.1:0\n")
        self.assertEqual([l.address.port for l in worker_config(config, 3).unserved_listeners],
                         [0])
        self.assertEqual(worker_nodename("VerneMQ@h", 1), "VerneMQ-1@h")

    @inlineCallbacks
    def test_two_workers_share_a_port(self) -> Generator[Deferred[Any], Any, None]:
        """Two workers serve one MQTT port: every publisher, whichever worker the kernel
        gave it, reaches the subscriber; a worker killed with SIGKILL is restarted (and
        logged) and serves again; stopping the supervisor stops the workers."""
        port = free_port()
        config = self.write_config(port)
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", config, "--workers", "2"],
                              cwd=self.dir)
        self.addCleanup(proc.stop)
        pids = {}
        for i in (1, 2):
            m = yield proc.wait_for_output(
                rb"worker %d \(node w-%d@127\.0\.0\.1\) started, pid (\d+)" % (i, i),
                timeout=START_TIMEOUT)
            pids[i] = int(m.group(1))
        for j in (2, 1):
            yield proc.wait_for_output(rb"vmq link to node w-%d@127\.0\.0\.1 established" % j,
                                       timeout=START_TIMEOUT)
        yield self.all_publishers_reach_the_subscriber(port, "a")
        os.kill(pids[1], 9)
        yield proc.wait_for_output(rb"worker 1 exited .* restarting", timeout=TIMEOUT)
        m = yield proc.wait_for_output(
            rb"worker 1 \(node w-1@127\.0\.0\.1\) started, pid (?!%d)(\d+)" % pids[1],
            timeout=TIMEOUT)
        pids[1] = int(m.group(1))
        # The restarted node joins again; the old w-1 expires from the cluster first.
        yield self.all_publishers_reach_the_subscriber(port, "b")
        yield proc.stop()
        for _ in range(100):
            if not any(pid_alive(p) for p in pids.values()):
                break
            yield quiet_period(0.1)
        self.assertEqual([p for p in pids.values() if pid_alive(p)], [])

    @inlineCallbacks
    def test_workers_stop_when_the_supervisor_is_killed(self) -> Generator[Deferred[Any],
                                                                           Any, None]:
        """SIGKILL of the supervisor leaves no orphan: each worker sees its pipe from
        the supervisor end and stops."""
        config = self.write_config(free_port())
        proc = RunningProcess(sys.executable, ["-m", "vmqtw", "-c", config, "--workers", "2"],
                              cwd=self.dir)
        self.addCleanup(proc.stop)
        pids = []
        for i in (1, 2):
            m = yield proc.wait_for_output(rb"worker %d \(node w-%d@127\.0\.0\.1\) started, "
                                           rb"pid (\d+)" % (i, i), timeout=START_TIMEOUT)
            pids.append(int(m.group(1)))
        yield proc.wait_for_output(rb"cluster node w-2@127\.0\.0\.1 joined",
                                   timeout=START_TIMEOUT)
        proc.transport.signalProcess("KILL")
        for _ in range(100):
            if not any(pid_alive(p) for p in pids):
                break
            yield quiet_period(0.1)
        self.assertEqual([p for p in pids if pid_alive(p)], [])

    @inlineCallbacks
    def all_publishers_reach_the_subscriber(self, port: int, tag: str
                                            ) -> Generator[Deferred[Any], Any, None]:
        """Eight publishers (spread by the kernel over the workers) each get a message to
        one subscriber; retried while a worker refuses (not ready) or a route travels."""
        def connected(client_id: str) -> Paho:
            # A worker refuses CONNECT ("server unavailable") until it sees the cluster.
            for _ in range(100):
                client = Paho(port, client_id, MQTTv311)
                try:
                    if client.connect(expect_success=False)[0] == 0:
                        return client
                except AssertionError:
                    pass
                client.close()
                time.sleep(0.1)
            raise AssertionError(f"{client_id} could not connect")

        def scenario() -> set[str]:
            sub = connected(f"sub-{tag}")
            sub.subscribe("w/#", 0)
            got: set[str] = set()
            try:
                for n in range(8):
                    pub = connected(f"pub-{tag}-{n}")
                    topic = f"w/{n}"
                    for _ in range(100):
                        pub.publish(topic, b"x")
                        try:
                            if sub.get(timeout=0.1).topic == topic:
                                got.add(topic)
                                break
                        except AssertionError:
                            continue
                    pub.close()
            finally:
                sub.close()
            return got

        got = yield in_thread(scenario)
        self.assertEqual(got, {f"w/{n}" for n in range(8)})

    def test_workers_need_a_cluster(self) -> None:
        """Without ``metadata_plugin = redis`` the workers are refused (they would be
        separate brokers sharing a port)."""
        from vmqtw.config import parse
        from vmqtw.workers import WorkersError
        with self.assertRaises(WorkersError):
            worker_config(parse("listener.tcp.default = 127.0.0.1:1883\n"), 1)
