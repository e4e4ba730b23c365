"""A real 2-node Ray cluster on this box, a farm per node (tests/system/ray_harness.py): Ray sees
the farms' cards as NPUs, places actors on them, and the cluster bench, node faults and failure
semantics work across nodes. No mocks: Ray's own NPU accelerator manager detects the cards."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from farm.admin import query_status
from loadtest.histograms import SIGNIFICANT_DIGITS, LatencyHistogram, rank_percentile
from tests.conftest import FOREIGN_FDS, poll_for, socket_fds
from tests.system.conftest import REPO
from tests.system.ray_harness import ProbeActor, start_cluster, stop_cluster

ray = pytest.importorskip("ray")
onnxruntime = pytest.importorskip("onnxruntime")

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

LOST = 507010
AICORE_EXCEPTION = 507015  # an injected "error" fault's default code
BATCH = 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = start_cluster(tmp_path_factory.mktemp("r"), cards=(2, 2))
    fds = socket_fds()
    try:
        ray.init(address=running.address, logging_level="WARNING", log_to_driver=False)
        poll_for(lambda: ray.cluster_resources().get("NPU", 0) == running.cards, 30.0, 0.2)
        yield running
    finally:
        ray.shutdown()
        FOREIGN_FDS.update(socket_fds() - fds)  # Ray's gRPC keeps these for the process
        stop_cluster(running)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(om path, inputs [n, BATCH, C, H, W], onnxruntime outputs on the host)."""
    from device.atc import convert
    from examples.pyacl.tiny_cnn import IMAGE, build_cnn

    work = tmp_path_factory.mktemp("cnn")
    source = build_cnn(work / "tiny_cnn.onnx")
    shape = ",".join(map(str, (BATCH, *IMAGE)))
    om = convert(
        str(source), str(work / "tiny_cnn"), soc_version="Ascend910B", input_shape=f"x:{shape}"
    )
    x = np.random.default_rng(5).standard_normal((3, BATCH, *IMAGE)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    reference = np.stack([session.run(None, {"x": batch})[0].ravel() for batch in x])
    return str(om), x, reference


def _nodes(cluster) -> dict[str, str]:
    """farm name -> Ray node id (each farm's address is its node's NPUFARM_ADDRESS)."""
    by_address = {n.farm.address: n.name for n in cluster.nodes}
    probe = ray.remote(num_cpus=0)(_Where)
    out = {}
    for node in ray.nodes():
        if not node["Alive"] or not node["Resources"].get("NPU"):
            continue
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False
        )
        address = ray.get(probe.options(scheduling_strategy=strategy).remote().address.remote())
        out[by_address[address]] = node["NodeID"]
    return out


class _Where:
    def address(self) -> str:
        import os

        return os.environ["NPUFARM_ADDRESS"]


def _probe(node_id: str | None = None):
    options = {"num_cpus": 0, "resources": {"NPU": 1}}
    if node_id is not None:
        options["scheduling_strategy"] = (
            ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id, soft=False)
        )
    return ray.remote(ProbeActor).options(**options).remote()


def _hbm_used(address: str, card: int) -> int:
    status = query_status(address)
    return next(c for c in status["cards"] if c["device_id"] == card)["stats"].get("hbm_used", 0)


def _bench_ray(cluster, plan, out, duration_s: float) -> dict:
    """``npufarm bench --ray`` (4 in flight, per-request samples) with the fault ``plan`` into
    ``out``; every node's faults recovered afterwards; its result.json."""
    from farm.admin import recover

    cmd = [sys.executable, "-m", "npufarm", "bench", "--ray", cluster.address, "--quiet"]
    cmd += ["--concurrency", "4", "--duration-s", str(duration_s), "--warmup-s", "0.3"]
    cmd += ["--per-request", "--faults", str(plan), "--out", str(out)]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        for node in cluster.nodes:
            recover(node.farm.address)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_npus_detected_and_one_device_per_actor(cluster, cnn):
    om, x, reference = cnn
    assert ray.cluster_resources()["NPU"] == cluster.cards == 4
    nodes = _nodes(cluster)
    assert len(nodes) == 2
    actors = [_probe() for _ in range(4)]
    infos = ray.get([a.describe.remote() for a in actors], timeout=60)
    seen = set()
    for info in infos:
        assert info["device_count"] == 1  # exactly one device: the one Ray gave it
        assert [info["visible"]] == info["accelerator_ids"]
        seen.add((info["node_id"], info["accelerator_ids"][0]))
    assert seen == {(node, card) for node in nodes.values() for card in ("0", "1")}
    assert ray.get([a.open.remote(om) for a in actors], timeout=60) == [0] * 4
    for actor in actors:
        for batch, want in zip(x, reference):
            code, y = ray.get(actor.run.remote(batch), timeout=30)
            assert code == 0
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    for actor in actors:
        ray.kill(actor)


def test_card_killed_on_node2_only_stops_node2(cluster, cnn):
    """node2's card crashes: its actor gets 507010, sticky until reset_device + set_device,
    while node1's actor keeps completing; after the reset node2's works again."""
    from core.fault_plan import FaultRule
    from loadtest.ray_nodes import NodeSet

    om, x, reference = cnn
    nodes = _nodes(cluster)
    one, two = _probe(nodes["node1"]), _probe(nodes["node2"])
    assert ray.get([one.open.remote(om), two.open.remote(om)], timeout=60) == [0, 0]
    card2 = int(ray.get(two.describe.remote())["accelerator_ids"][0])
    agents = NodeSet.start(ray)
    try:
        done = agents.inject([FaultRule(kind="crash", card=card2, node="node2")])
    finally:
        agents.close()
    assert [d["node_id"] for d in done] == [nodes["node2"]] and not done[0]["reply"].get("code")
    assert ray.get(two.run.remote(x[0]), timeout=30)[0] == LOST  # the crash fires on execute
    for batch, want in zip(x, reference):  # sticky on node 2, node 1 carries on
        assert ray.get(two.run.remote(batch), timeout=30)[0] == LOST
        code, y = ray.get(one.run.remote(batch), timeout=30)
        assert code == 0 and np.allclose(y, want, rtol=1e-5, atol=1e-6)
    assert ray.get(two.reopen.remote(om), timeout=60) == 0
    code, y = ray.get(two.run.remote(x[1]), timeout=30)
    assert code == 0 and np.allclose(y, reference[1], rtol=1e-5, atol=1e-6)
    ray.kill(one)
    ray.kill(two)


def test_killed_actor_returns_its_card_memory(cluster, cnn):
    """Every NPU taken; one actor is killed: its farm reclaims its card's memory and Ray places
    a new actor on the freed card, which works."""
    om, x, reference = cnn
    actors = [_probe() for _ in range(4)]
    infos = ray.get([a.describe.remote() for a in actors], timeout=60)
    assert ray.get([a.open.remote(om) for a in actors], timeout=60) == [0] * 4
    victim, info = actors[-1], infos[-1]
    card = int(info["accelerator_ids"][0])
    poll_for(lambda: _hbm_used(info["address"], card) > 0, 5.0, 0.05)  # heartbeat stats
    reclaimed = query_status(info["address"])["reclaimed"].get("clients", 0)
    ray.kill(victim)
    poll_for(lambda: _hbm_used(info["address"], card) == 0, 10.0, 0.05)
    assert query_status(info["address"])["reclaimed"]["clients"] == reclaimed + 1
    new = _probe()
    again = ray.get(new.describe.remote(), timeout=60)
    assert (again["node_id"], again["accelerator_ids"]) == (
        info["node_id"],
        info["accelerator_ids"],
    )
    assert ray.get(new.open.remote(om), timeout=60) == 0
    code, y = ray.get(new.run.remote(x[2]), timeout=30)
    assert code == 0 and np.allclose(y, reference[2], rtol=1e-5, atol=1e-6)
    for actor in (*actors[:-1], new):
        ray.kill(actor)


def test_bench_over_two_nodes_merges_histograms(cluster, tmp_path):
    """`npufarm bench --ray` over both nodes, with a fault plan whose rule is for node2 only: the
    merged report's percentiles (overall, per node, per card) are those of every request's
    sample, within the histograms' precision (exactly those of a histogram of all of them);
    counts add up over the nodes; the errors are node2's only."""

    out, plan = tmp_path / "bench", tmp_path / "plan.toml"
    plan.write_text('[[fault]]\nkind = "error"\nprobability = 0.05\nnode = "node2"\n')
    result = _bench_ray(cluster, plan, out, duration_s=1.5)
    phase = result["phases"][0]
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    start, end = phase["start_s"], phase["end_s"]
    measured = [r for r in rows if start <= r["intended_s"] < end]
    ok = [r for r in measured if r["code"] == 0]
    assert phase["requests"] == len(measured) and phase["completed"] == len(ok) > 100
    by_farm = {n["farm"]: n for n in phase["per_node"].values()}
    assert by_farm["node1"]["errors"] == {}
    assert set(by_farm["node2"]["errors"]) == {str(AICORE_EXCEPTION)}
    nodes = result["cluster"]["nodes"]
    assert len(nodes) == 2 and sorted(len(n["cards"]) for n in nodes) == [2, 2]
    assert sum(n["completed"] for n in phase["per_node"].values()) == phase["completed"]

    def near(got: float, want: float) -> bool:
        # the histograms' precision, plus 1 µs: requests.jsonl rounds latencies to 0.1 µs, the
        # workers recorded the unrounded ones (a value on a µs boundary may land either side)
        return abs(got - want) <= want * 10.0**-SIGNIFICANT_DIGITS + 0.001

    def check(figures, lat):
        whole = LatencyHistogram().record_ms(lat).figures((50, 90, 99, 99.9))
        for key in ("p50", "p90", "p99", "p99.9", "max"):
            assert near(figures[key], whole[key]), key  # a merge = the histogram of the union
        for q in (50, 90, 99, 99.9):
            assert near(figures[f"p{q:g}"], rank_percentile(np.asarray(lat), q)), q

    check(phase["latency_ms"], [r["latency_ms"] for r in ok])
    for figures in phase["per_node"].values():
        check(figures["latency_ms"], [r["latency_ms"] for r in ok if r["card"] in figures["cards"]])
    for card, figures in phase["per_card"].items():
        check(figures["latency_ms"], [r["latency_ms"] for r in ok if r["card"] == int(card)])
    assert result["cluster"]["histograms"]["significant_digits"] == SIGNIFICANT_DIGITS
    assert result["generator"]["start_method"] == "ray"


def test_bench_fault_plan_times_count_from_the_bench_start(cluster, tmp_path):
    """`npufarm bench --ray --faults`: a rule's at_s counts from the bench's start on every node,
    as the result's times do, not from each farm's start (these farms have been up for longer
    than at_s: counted from there, the rule would have ended before the bench). A 0.6 s hang of
    node2's card 1 at at_s = 2.5 shows in that card's latency timeline and as its fault window
    2.5 s after the bench start; `npufarm report` of the result prints the per-node table."""

    at_s, hang_s, tolerance_s = 2.5, 0.6, 0.3
    out, plan = tmp_path / "bench", tmp_path / "plan.toml"
    plan.write_text(
        f'[[fault]]\nkind = "hang"\nat_s = {at_s}\nduration_s = {hang_s}\ncard = 1\n'
        'node = "node2"\nname = "late-hang"\n'
    )
    uptime_s = min(query_status(n.farm.address)["uptime_s"] for n in cluster.nodes)
    time.sleep(max(0.0, at_s + hang_s + 0.5 - uptime_s))  # in farm time, the rule is over
    result = _bench_ray(cluster, plan, out, duration_s=3.0)
    node2 = next(n for n in result["cluster"]["nodes"] if n["farm"] == "node2")
    card = next(int(g) for g, device in node2["cards"].items() if device == 1)
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    hung = [r for r in rows if r["card"] == card and r["latency_ms"] > hang_s * 500.0]
    assert hung, result["generator"]
    fired_s = min(r["end_s"] for r in hung) - hang_s  # the first hung task's fault
    assert abs(fired_s - at_s) <= tolerance_s, (fired_s, result["generator"]["setup_s"])
    before = [r for r in rows if r["card"] == card and r["end_s"] < at_s - tolerance_s]
    assert before and max(r["latency_ms"] for r in before) < hang_s * 500.0
    [window] = result["phases"][0]["fault_windows"]
    assert (window["kind"], window["card"], window["name"]) == ("hang", card, "late-hang")
    assert abs(window["start_s"] - at_s) <= tolerance_s, window["start_s"]
    report = subprocess.run(
        [sys.executable, "-m", "npufarm", "report", str(out / "result.json"), "--no-plots"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    table = report.stdout[report.stdout.index("Per node (Ray)") :]
    for node in result["cluster"]["nodes"]:
        assert f"{node['node_id'][:8]} {node['farm']}" in " ".join(table.split())


def test_inject_node_rule_reaches_only_that_node(cluster):
    """`npufarm inject --ray ADDRESS ... node=node2`: the rule lands in node2's farm only."""
    cmd = [sys.executable, "-m", "npufarm", "inject", "--ray", cluster.address]
    done = subprocess.run(
        [*cmd, "kind=slow", "factor=2", "card=0", "node=node2", "name=ray-node2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rules = {
        n.name: [r.get("name") for r in query_status(n.farm.address)["faults"].get("active", [])]
        for n in cluster.nodes
    }
    assert "ray-node2" in rules["node2"] and "ray-node2" not in rules["node1"]
    refused = subprocess.run(
        [*cmd, "kind=slow", "factor=2", "node=node9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "node9" in refused.stderr
    for node in cluster.nodes:
        from farm.admin import recover

        recover(node.farm.address)


def test_farm_refuses_a_rule_for_another_node(cluster):
    """Without Ray, a farm takes a node= rule only when it names the farm itself."""
    from farm.admin import inject, recover

    one, two = cluster.nodes
    refused = inject(two.farm.address, {"kind": "slow", "factor": 2.0, "node": one.name})
    assert refused.get("code") and one.name in refused.get("error", "")
    taken = inject(one.farm.address, {"kind": "slow", "factor": 2.0, "node": one.name})
    assert not taken.get("code")
    recover(one.farm.address)


def test_demo_ray(cluster, tmp_path):
    """`npufarm demo --ray`: the load over both nodes, a link drop on the last node's card 0
    that only that node's actor sees and recovers from, the report with per-node figures."""
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "npufarm", "demo", "--ray", cluster.address, "--out", str(out)]
        + ["--duration-s", "3", "--rate", "100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    phase = result["phases"][0]
    last = result["cluster"]["nodes"][-1]
    [window] = phase["fault_windows"]
    assert window["kind"] == "disconnect" and str(window["card"]) in last["cards"]
    assert window["time_to_recover_s"] is not None
    assert set(phase["errors"]) <= {str(LOST)}
    others = [n for n in result["cluster"]["nodes"] if n["node_id"] != last["node_id"]]
    for node in others:
        assert phase["per_node"][node["node_id"]]["errors"] == {}
    assert done.stdout.count("Per node (Ray)") == 1  # render_terminal prints it
