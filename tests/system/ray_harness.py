"""A Ray cluster of several nodes on this box, each node with its own farm, for the Ray tests and
the cluster benchmark.

::

    farm k: npufarm up --detach (own runtime dir, name, ipc endpoint): the documented recipe
    node k: ray start [--head] in its own session (process group), env NPUFARM_ADDRESS=farm k
            → its raylet detects the farm's cards as NPUs (acl before acl.init, as on hardware)
            → its workers inherit the raylet's environment: actors find farm k

Each ``ray start`` runs with ``start_new_session``: the daemons it leaves (GCS, raylet, agents,
workers) stay in its process group, so :func:`stop_cluster` ends exactly this cluster's
processes (SIGTERM to each group, then SIGKILL to what is left), never another Ray on the box,
then stops the farms with ``npufarm down`` and checks they left nothing (processes, /dev/shm
segments, sockets, state file). No dashboard, a small object store, one
CPU per node, a private ``--temp-dir`` (short: Ray's unix socket paths must stay under 107
characters).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.statefile import pid_alive
from farm.admin import query_status
from tests.conftest import npufarm_segments, poll_for
from tests.system.conftest import REPO

__all__ = [
    "NODE_CONFIG",
    "NodeFarm",
    "RayNode",
    "RayCluster",
    "start_cluster",
    "stop_cluster",
    "free_port",
    "ProbeActor",
]

#: ci.toml with heartbeats that survive Ray starting on 2 cores (a lost card is detected in 1 s)
NODE_CONFIG = """
[farm]
name = "rayci"
endpoint = "ipc"
time_scale = {time_scale}
heartbeat_interval_s = 0.1
heartbeat_liveness = 10
restart_max = 5
restart_window_s = 10.0
skip_sync = "poison"
sanitizer = "off"
seed = 0

[cards]
count = 2
profile = {{ base = "910b", name = "910b-ray", hbm_bytes = "256MiB" }}
"""
_RAY = str(Path(sys.executable).with_name("ray"))
_OBJECT_STORE_BYTES = 80 * 1000 * 1000
#: Ray puts its sockets at TEMP_DIR/session_<date>_<time>_<µs>_<pid>/sockets/plasma_store
#: (up to ~65 characters more); a unix socket path must stay under 108 bytes
_MAX_TEMP_DIR = 40
_STOP_TIMEOUT_S = 4.0  # raylet and GCS often ignore SIGTERM for longer: SIGKILL then


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class NodeFarm:
    """A farm started with ``npufarm up --detach`` (a daemon in its own session)."""

    runtime_dir: Path
    name: str
    state: dict

    @property
    def address(self) -> str:
        return self.state["endpoint"]

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        where = ["--runtime-dir", str(self.runtime_dir), "--name", self.name]
        return subprocess.run(
            [sys.executable, "-m", "npufarm", *args, *where],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )


@dataclass
class RayNode:
    name: str  # the farm's name: what node= rules may use
    farm: NodeFarm
    process: subprocess.Popen | None = None  # the `ray start` (exits once the node is up)
    pgid: int | None = None
    start_s: float = 0.0  # `ray start` began (monotonic)
    up_s: float = 0.0  # `ray start` returned


@dataclass
class RayCluster:
    address: str  # HOST:PORT of the head's GCS
    temp_dir: Path
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def cards(self) -> int:
        return sum(len(n.farm.state["cards"]) for n in self.nodes)


def _start_farm(root: Path, name: str, cards: int, time_scale: float) -> NodeFarm:
    runtime_dir = Path(tempfile.mkdtemp(prefix="nr", dir="/tmp"))
    config = root / f"{name}.toml"
    config.write_text(NODE_CONFIG.format(time_scale=time_scale))
    farm = NodeFarm(runtime_dir, name, {})
    done = farm.cli("up", "--detach", "--config", str(config), "--cards", str(cards))
    if done.returncode != 0:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        raise AssertionError(f"npufarm up --detach {name}: {done.stdout}{done.stderr}")
    farm.state = json.loads((runtime_dir / f"{name}.json").read_text())
    return farm


def _stop_farm(farm: NodeFarm) -> None:
    """``npufarm down``, then: its processes, segments, sockets and state file are gone."""
    try:  # the cards now: a restart changes a card's pid
        cards = query_status(farm.address, timeout_s=2.0)["cards"]
    except Exception:
        cards = farm.state.get("cards", ())
    pids = [farm.state["pid"], *(c["pid"] for c in cards if c.get("pid"))]
    try:
        done = farm.cli("down")
        assert done.returncode == 0, f"npufarm down {farm.name}: {done.stdout}{done.stderr}"
        for pid in pids:
            poll_for(lambda pid=pid: not pid_alive(pid), 5.0)
        prefix = f"npufarm-{farm.name}-{farm.state['pid']}-"
        leftover = {seg for seg in npufarm_segments() if seg.startswith(prefix)}
        assert not leftover, f"farm {farm.name} left shm segments: {leftover}"
        assert not list(farm.runtime_dir.glob("*.sock")), f"farm {farm.name} left sockets"
        assert not (farm.runtime_dir / f"{farm.name}.json").exists(), "state file left"
    finally:
        shutil.rmtree(farm.runtime_dir, ignore_errors=True)


def _node_env(farm: NodeFarm) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASCEND_", "RAY_"))}
    env.update(NPUFARM_ADDRESS=farm.address, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    return env


def _ray_start(node: RayNode, args: list[str]) -> None:
    common = ["--num-cpus", "1", "--object-store-memory", str(_OBJECT_STORE_BYTES)]
    common += ["--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats"]
    node.start_s = time.monotonic()
    node.process = subprocess.Popen(
        [_RAY, "start", *args, *common],
        cwd=REPO,
        env=_node_env(node.farm),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    node.pgid = node.process.pid
    out, _ = node.process.communicate(timeout=120)
    node.up_s = time.monotonic()
    if node.process.returncode != 0:
        raise AssertionError(f"ray start for {node.name} failed:\n{out.decode(errors='replace')}")


def start_cluster(
    root: Path, cards: tuple[int, ...] = (2, 2), time_scale: float = 0.0, prefix: str = "node"
) -> RayCluster:
    """A farm and a Ray node per entry of ``cards`` (the first is the head); ``root``: a short
    directory for configs and Ray's temp dir. Returns once every node has joined."""
    temp_dir = root / "ray"
    if len(str(temp_dir)) > _MAX_TEMP_DIR:  # a long pytest basetemp: a short private dir
        temp_dir = Path(tempfile.mkdtemp(prefix="nray", dir="/tmp"))
    temp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cluster = RayCluster(f"127.0.0.1:{port}", temp_dir)
    try:
        for k, count in enumerate(cards, start=1):
            name = f"{prefix}{k}"
            node = RayNode(name, _start_farm(root, name, count, time_scale))
            cluster.nodes.append(node)
            if k == 1:
                head = ["--head", "--port", str(port), "--temp-dir", str(temp_dir)]
                head += ["--include-dashboard=false", "--dashboard-port", str(free_port())]
                _ray_start(node, head)
            else:
                _ray_start(node, ["--address", cluster.address])
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _end_group(pgid: int) -> list[int]:
    """SIGTERM the group, wait, SIGKILL what is left; returns the pids that needed SIGKILL."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return []
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    stubborn = group_pids(pgid)
    if stubborn:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        poll_for(lambda: not group_pids(pgid), 10.0)
    return stubborn


def stop_cluster(cluster: RayCluster) -> None:
    """Stop the Ray nodes (workers first, the head last), then the farms with their leak
    checks; fails if a process of the cluster survived."""
    errors = []
    for node in reversed(cluster.nodes):
        if node.pgid is not None:
            _end_group(node.pgid)
            if group_pids(node.pgid):
                errors.append(f"{node.name}: Ray processes left: {group_pids(node.pgid)}")
    for node in cluster.nodes:
        try:
            _stop_farm(node.farm)
        except AssertionError as exc:
            errors.append(f"{node.name}: {exc}")
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    if errors:
        raise AssertionError("; ".join(errors))


class ProbeActor:
    """A pyACL client inside a Ray actor (made remote by the tests, with ``resources={"NPU":
    1}``): sees what Ray gave it, runs an .om on its device 0, and can reopen it after a loss."""

    def __init__(self) -> None:
        import acl

        self.acl = acl
        assert acl.init() == 0
        self.model_id = None

    def describe(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        count, ret = self.acl.rt.get_device_count()
        return {
            "node_id": context.get_node_id(),
            "accelerator_ids": list(context.get_accelerator_ids().get("NPU", [])),
            "visible": os.environ.get("ASCEND_RT_VISIBLE_DEVICES"),
            "address": os.environ.get("NPUFARM_ADDRESS"),
            "device_count": count if ret == 0 else -ret,
            "pid": os.getpid(),
        }

    def open(self, om_path: str) -> int:
        """set_device(0), a stream, the model and its buffers; the first nonzero code or 0."""
        acl = self.acl
        ret = acl.rt.set_device(0)
        if ret:
            return ret
        self.stream, ret = acl.rt.create_stream()
        self.model_id, ret = acl.mdl.load_from_file(om_path)
        if ret:
            return ret
        desc = acl.mdl.create_desc()
        acl.mdl.get_desc(desc, self.model_id)
        self.io = []
        for count, size_of in (
            (acl.mdl.get_num_inputs, acl.mdl.get_input_size_by_index),
            (acl.mdl.get_num_outputs, acl.mdl.get_output_size_by_index),
        ):
            dataset, sizes = acl.mdl.create_dataset(), []
            for index in range(count(desc)):
                size = size_of(desc, index)
                ptr, ret = acl.rt.malloc(size, 0)
                if ret:
                    return ret
                acl.mdl.add_dataset_buffer(dataset, acl.create_data_buffer(ptr, size))
                sizes.append((ptr, size))
            self.io.append((dataset, sizes))
        return 0

    def run(self, x):
        """One inference of ``x`` (float32): (code, output or None)."""
        import numpy as np

        acl = self.acl
        (inputs, [(d_in, n_in)]), (outputs, [(d_out, n_out)]) = self.io
        x = np.ascontiguousarray(x, np.float32)
        ret = acl.rt.memcpy(d_in, n_in, acl.util.numpy_to_ptr(x), x.nbytes, 1)
        ret = ret or acl.mdl.execute_async(self.model_id, inputs, outputs, self.stream)
        ret = ret or acl.rt.synchronize_stream(self.stream)
        if ret:
            return ret, None
        y = np.empty(n_out // 4, np.float32)
        ret = acl.rt.memcpy(acl.util.numpy_to_ptr(y), n_out, d_out, n_out, 2)
        return ret, (y if ret == 0 else None)

    def reopen(self, om_path: str) -> int:
        """After a loss: reset_device(0) (what a resilient service does), then open again."""
        self.acl.rt.reset_device(0)
        return self.open(om_path)
