"""A two-node Ray cluster on this machine: two network namespaces joined by a veth pair.

The head node (``192.0.2.1``, namespace ``st-head``) and a worker node (``192.0.2.2``,
namespace ``st-node1``) each run ``ray start`` with one CPU; their only link is the veth
pair, shaped to 1 Gbit/s each way (``tc tbf``; ``tc netem`` adds 0.2 ms of delay where the
kernel has it). The addresses are from TEST-NET-1 (RFC 5737, never routed) and exist only
inside the two namespaces, so no traffic leaves the machine. The cluster uses Ray's token
authentication with a token made for it. Needs root, iproute2 and Ray.

    python benchmarks/cluster/netns_cluster.py run -- \\
        sparsetrain train --dataset fashion-mnist --epochs 10 --parallel wasap --workers 2 \\
        --ray-address {address}
    python benchmarks/cluster/netns_cluster.py up      # start it and leave it running
    python benchmarks/cluster/netns_cluster.py exec -- sparsetrain train ...  # in st-head
    python benchmarks/cluster/netns_cluster.py down    # stop it, remove the namespaces

``run`` starts the cluster, runs the command in the head namespace (``{address}`` becomes
the head's ``HOST:PORT``), and tears the cluster down whatever happens, within
``--timeout`` seconds. Python users: :class:`Cluster` (a context manager), with
:meth:`Cluster.kill_node` (kill -9 of every process of a node, as if it lost power) and
:meth:`Cluster.start_node` (it comes back).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HEAD_NS = "st-head"
NODE_NS = "st-node{}"
SUBNET = "192.0.2.{}"  # TEST-NET-1: documentation addresses, never routed
PORT = 6379
ROOT = Path(os.environ.get("SPARSETRAIN_CLUSTER_DIR", "/tmp/sparsetrain-cluster"))
#: Cluster-wide Ray settings: a dead node is noticed within about 3 s (Ray's default is
#: about 30 s), and pushes up to 8 MB travel inline in the call instead of through the
#: object store.
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 2000, "health_check_period_ms": 1000,
                 "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000,
                 "max_direct_call_object_size": 8 << 20,
                 "task_rpc_inlined_bytes_limit": 64 << 20}


def _sh(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, text=True, timeout=60,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)


def available() -> tuple[bool, str]:
    """``(True, "")`` if this machine can make the cluster, else ``(False, why)``."""
    if sys.platform != "linux":
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "tc", "ray"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' is not installed"
    probe = "st-probe"
    try:
        _sh("ip", "netns", "add", probe)
    except (subprocess.SubprocessError, OSError) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return False, f"cannot create a network namespace ({err.strip()})"
    _sh("ip", "netns", "del", probe, check=False)
    return True, ""


def _namespaces() -> list[str]:
    out = _sh("ip", "netns", "list", check=False).stdout or ""
    return [line.split()[0] for line in out.splitlines() if line.split()]


class Cluster:
    """The two-namespace Ray cluster (see the module docstring); ``nodes`` worker nodes
    besides the head, ``cpus`` CPUs each, links shaped to ``rate`` (None: unshaped)."""

    def __init__(self, nodes: int = 1, cpus: int = 1, rate: str | None = "1gbit",
                 delay: str = "0.2ms"):
        self.nodes, self.cpus, self.rate, self.delay = int(nodes), int(cpus), rate, delay
        self.address = f"{SUBNET.format(1)}:{PORT}"
        self.shaping = "none"
        self.token = ROOT / "token"
        self.procs: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ environment
    def env(self) -> dict[str, str]:
        """The environment a process of the cluster (or a driver joining it) needs."""
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token),
                   RAY_USAGE_STATS_ENABLED="0")
        return env

    def command(self, args: list[str]) -> list[str]:
        """``args`` to run in the head namespace (``{address}`` filled in)."""
        return ["ip", "netns", "exec", HEAD_NS, *[a.replace("{address}", self.address)
                                                   for a in args]]

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Cluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.down()
        return False

    def up(self, timeout: float = 120.0) -> None:
        ok, why = available()
        if not ok:
            raise RuntimeError(f"cannot make the test cluster: {why}")
        self.down()  # what a killed earlier run left
        ROOT.mkdir(parents=True, exist_ok=True)
        self.token.write_text(secrets.token_hex(32))
        self.token.chmod(0o600)
        _sh("ip", "netns", "add", HEAD_NS)
        _sh("ip", "-n", HEAD_NS, "link", "set", "lo", "up")
        # A bridge in the head namespace joins the nodes' veth ends (one node: plain pair).
        _sh("ip", "-n", HEAD_NS, "link", "add", "st-br", "type", "bridge")
        _sh("ip", "-n", HEAD_NS, "addr", "add", f"{SUBNET.format(1)}/24", "dev", "st-br")
        _sh("ip", "-n", HEAD_NS, "link", "set", "st-br", "up")
        for i in range(1, self.nodes + 1):
            ns = NODE_NS.format(i)
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "link", "add", f"st-h{i}", "netns", HEAD_NS, "type", "veth", "peer",
                "name", f"st-n{i}", "netns", ns)
            _sh("ip", "-n", HEAD_NS, "link", "set", f"st-h{i}", "master", "st-br")
            _sh("ip", "-n", HEAD_NS, "link", "set", f"st-h{i}", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{SUBNET.format(i + 1)}/24", "dev", f"st-n{i}")
            _sh("ip", "-n", ns, "link", "set", f"st-n{i}", "up")
            if self.rate:
                self._shape(HEAD_NS, f"st-h{i}")
                self.shaping = self._shape(ns, f"st-n{i}")
        ray_dir = ROOT / "ray"
        self._start(HEAD_NS, ["--head", "--include-dashboard", "false", "--node-ip-address",
                              SUBNET.format(1), "--port",
                              str(PORT), "--temp-dir", str(ray_dir),
                              "--system-config", json.dumps(SYSTEM_CONFIG)])
        self._wait(lambda n: n >= 1, timeout)
        for i in range(1, self.nodes + 1):
            self.start_node(i, wait=False)
        self._wait(lambda n: n >= self.nodes + 1, timeout)

    def _shape(self, ns: str, dev: str) -> str:
        """Shape ``dev``'s egress: netem (rate and delay) where the kernel has it, else
        tbf (rate only). Returns what was applied."""
        netem = _sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem", "delay",
                    self.delay, "rate", self.rate, check=False)
        if netem.returncode == 0:
            return f"netem rate {self.rate} delay {self.delay}"
        _sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate,
            "burst", "256kb", "latency", "10ms")
        return f"tbf rate {self.rate} (no netem in this kernel: no added delay)"

    def _start(self, ns: str, args: list[str]) -> None:
        log = open(ROOT / f"{ns}.log", "ab")  # noqa: SIM115 - the process keeps it
        cmd = ["ip", "netns", "exec", ns, "ray", "start", "--num-cpus", str(self.cpus),
               "--disable-usage-stats", "--block", *args]
        self.procs[ns] = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log,
                                          start_new_session=True)

    def start_node(self, i: int, wait: bool = True, timeout: float = 120.0) -> None:
        """Start (or restart) worker node ``i`` and join it to the head."""
        self._start(NODE_NS.format(i), ["--address", self.address, "--node-ip-address",
                                        SUBNET.format(i + 1)])
        if wait:
            self._wait(lambda n: n >= self.nodes + 1, timeout)

    def alive_nodes(self) -> int:
        """Nodes the head counts as alive (-1 while it does not answer)."""
        probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='error', "
                 "log_to_driver=False); print(sum(bool(n['Alive']) for n in ray.nodes()))")
        try:
            out = subprocess.run(self.command([sys.executable, "-c", probe, "{address}"]),
                                 env=self.env(), text=True, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return -1
        lines = out.stdout.strip().splitlines()
        return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else -1

    def _wait(self, ready, timeout: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            for ns, p in self.procs.items():
                if p.poll() is not None:
                    log = (ROOT / f"{ns}.log").read_text(errors="replace").strip().splitlines()
                    raise RuntimeError(f"'ray start' in {ns} exited ({p.returncode}): "
                                       + " | ".join(log[-3:]))
            if ready(self.alive_nodes()):
                return
            time.sleep(1.0)
        raise RuntimeError(f"the cluster did not come up within {timeout:.0f} s; see the "
                           f"logs in {ROOT}")

    def kill_node(self, i: int) -> int:
        """kill -9 every process of worker node ``i`` (its raylet, object store and
        workers: the node is gone as if it lost power); returns how many."""
        ns = NODE_NS.format(i)
        n = _kill_namespace(ns)
        proc = self.procs.pop(ns, None)
        if proc is not None:
            proc.wait(timeout=30)
        return n

    def down(self) -> None:
        """Stop every process of the cluster's namespaces and remove them (idempotent)."""
        ours = [ns for ns in _namespaces() if ns == HEAD_NS or ns.startswith("st-node")]
        for ns in ours:
            _kill_namespace(ns)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = {}
        for ns in ours:
            _sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(ROOT, ignore_errors=True)


def _kill_namespace(ns: str) -> int:
    """kill -9 the processes of namespace ``ns`` until none is left; returns how many."""
    killed = set()
    for _ in range(50):
        out = _sh("ip", "netns", "pids", ns, check=False).stdout or ""
        pids = [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return len(killed)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "run", "exec", "check"])
    parser.add_argument("--nodes", type=int, default=1, help="worker nodes besides the head")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs each node offers Ray")
    parser.add_argument("--rate", default="1gbit", help="link rate ('' for unshaped)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="run/exec: seconds the command may take")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    cluster = Cluster(args.nodes, args.cpus, args.rate or None)
    if args.action == "check":
        ok, why = available()
        print("ok" if ok else f"unavailable: {why}")
        return 0 if ok else 1
    if args.action == "down":
        cluster.down()
        return 0
    if args.action in ("run", "exec") and not cmd:
        parser.error(f"'{args.action}' needs a command after --")
    if args.action == "exec":
        return subprocess.run(cluster.command(cmd), env=cluster.env(),
                              timeout=args.timeout).returncode
    if args.action == "up":
        try:
            cluster.up()
        except RuntimeError as exc:
            cluster.down()
            print(f"netns_cluster: {exc}", file=sys.stderr)
            return 1
        print(f"cluster up: head {cluster.address} ({HEAD_NS}), {args.nodes} worker node(s), "
              f"links: {cluster.shaping}; drivers run in {HEAD_NS} with RAY_AUTH_MODE=token "
              f"RAY_AUTH_TOKEN_PATH={cluster.token}")
        return 0
    try:
        with cluster:
            print(f"netns_cluster: head {cluster.address}, {args.nodes} worker node(s), links: "
                  f"{cluster.shaping}", file=sys.stderr)
            return subprocess.run(cluster.command(cmd), env=cluster.env(),
                                  timeout=args.timeout).returncode
    except RuntimeError as exc:
        print(f"netns_cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
