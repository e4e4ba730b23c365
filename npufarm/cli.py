"""The ``npufarm`` command: argument parsing and the subcommands that run, inspect and stop a farm.

Import rule (startup matters: this module runs for every ``npufarm`` call, ``npufarm status``
included, which scripts and watch loops call often): the module top imports only what the
farm-inspection subcommands (status, down, inject, trace, recover) need, i.e. the config and
fault plan models, the state file, the admin client and the status view. A subcommand that
starts or drives a farm imports its own module inside its handler, with the measured cost.
Measured on the 2-core dev box (``python -m npufarm --help``, best of 5): 0.33 s with every
subcommand module at the top, 0.11 s with this rule. What each deferred import adds on top of
this module: farm.broker +0.14 s, loadtest.demo +0.16 s, loadtest.loadgen +0.15 s,
loadtest.render +0.07 s, npufarm.run (the client runtime) +0.14 s, device.atc +0.07 s,
cabi.build (cffi and the bridge, which imports the client runtime) +0.25 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from rich.console import Console
from rich.live import Live

from core import statefile
from core.config import FarmConfig, load_config
from core.errors import NpuFarmError
from core.fault_plan import FaultPlan, FaultRule  # not core.faults: its injector needs numpy
from farm import admin
from npufarm.status_view import status_view

__all__ = ["main", "status_view"]

logger = logging.getLogger(__name__)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--config", help="farm config TOML (default: configs/default.toml)")
    parser.add_argument("--name", help="farm name (state file and default endpoint)")
    parser.add_argument("--endpoint", help='"ipc", "ipc:///path" or "tcp://127.0.0.1:PORT"')
    parser.add_argument("--runtime-dir", help="where the state file and ipc sockets live")
    parser.add_argument("--cards", type=int, help="number of cards")
    parser.add_argument("--time-scale", type=float, help="latency multiplier (0 = no latency)")


def _load(args: argparse.Namespace) -> FarmConfig:
    return load_config(
        args.config,
        overrides={
            "name": args.name,
            "endpoint": args.endpoint,
            "runtime_dir": args.runtime_dir,
            "cards": args.cards,
            "time_scale": args.time_scale,
        },
    )


def _address(args: argparse.Namespace) -> str:
    return admin.find_address(lambda: _load(args))


def render_status(farm: dict[str, Any]) -> None:
    Console(width=None if sys.stdout.isatty() else 160).print(status_view(farm))


_READY_POLL_S = 0.05  # how often `up` looks for its state file (written once every card is up)


def _announce_ready(config: FarmConfig, stop: threading.Event) -> None:
    """Print one line once this process's farm has written its state file (every card up)."""
    path = statefile.state_path(config)
    while not stop.wait(_READY_POLL_S):
        state = statefile.read_state(path)
        if state is not None and state.get("pid") == os.getpid():
            cards = state.get("cards") or []
            print(
                f"npufarm: farm {config.name!r} ready at {state['endpoint']}: {len(cards)} "
                f"card{'s' * (len(cards) != 1)}, state file {path}",
                flush=True,
            )
            return


def _refuse_running(config: FarmConfig) -> None:
    """``NpuFarmError`` when a live farm already holds this name's state file or the address
    (a second farm would take over the first one's ipc socket)."""
    state = statefile.read_state(statefile.state_path(config))
    if state is not None:
        raise NpuFarmError(
            f"farm {config.name!r} is already running (pid {state['pid']}) at "
            f"{state['endpoint']}; stop it with `npufarm down --name {config.name}` or choose "
            "another --name"
        )
    busy = admin.address_in_use(config.endpoint_address())
    if busy is not None:
        raise NpuFarmError(f"{busy}; choose another --endpoint or --name")


def _detached_command(args: argparse.Namespace, config: FarmConfig) -> list[str]:
    """The foreground ``npufarm up`` the daemon runs: this config, resolved, paths absolute."""
    command = [sys.executable, "-m", "npufarm", "up", "--name", config.name]
    command += ["--runtime-dir", str(config.runtime_path()), "--endpoint"]
    command += [config.endpoint_address()] + ["-v"] * args.verbose
    paths = {"--config": args.config, "--faults": args.faults, "--fault-log": args.fault_log}
    paths["--trace"] = args.trace
    for flag, value in paths.items():
        if value is not None:
            command += [flag, os.path.abspath(value)]
    for flag, value in (
        ("--cards", args.cards),
        ("--time-scale", args.time_scale),
        ("--metrics-port", args.metrics_port),
    ):
        if value is not None:
            command += [flag, str(value)]
    return command


def _up_detached(args: argparse.Namespace, config: FarmConfig) -> int:
    """``npufarm up --detach``: start the farm as a daemon, return once it is ready."""
    log_path = Path(args.log or config.runtime_path() / f"{config.name}.log").absolute()
    print(f"npufarm: starting farm {config.name!r} in the background, log {log_path}", flush=True)
    try:
        state = admin.start_detached(
            _detached_command(args, config),
            log_path,
            statefile.state_path(config),
            args.ready_timeout_s,
        )
    except NpuFarmError as exc:
        print(f"npufarm: up: {exc.args[0]}", file=sys.stderr)
        return 1
    cards = len(state.get("cards") or [])
    print(
        f"npufarm: farm {config.name!r} ready at {state['endpoint']}: {cards} "
        f"card{'s' * (cards != 1)}, pid {state['pid']}, state file "
        f"{statefile.state_path(config)}; stop it with `npufarm down --name {config.name}`"
    )
    print(f"export {statefile.ADDRESS_ENV}={state['endpoint']}", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    config = _load(args)
    plan = FaultPlan.from_toml(args.faults) if args.faults else None
    if plan is not None:
        plan.check_card_count(len(config.cards))
    config.make_runtime_dir()  # a missing --runtime-dir is made (0700), or a one-line error
    if args.watch_parent is None:  # (an embedded farm has a private directory of its own)
        _refuse_running(config)
    if args.detach:
        return _up_detached(args, config)
    from farm.broker import run_farm  # +0.14 s of startup: see the module docstring

    stop = threading.Event()
    if args.watch_parent is None:  # an embedded farm's lines would land in its program's output
        threading.Thread(target=_announce_ready, args=(config, stop), daemon=True).start()
    try:
        run_farm(
            config,
            args.watch_parent,
            plan=plan,
            fault_log=args.fault_log,
            trace=args.trace,
            metrics_port=args.metrics_port,
        )
    finally:
        stop.set()
    if args.watch_parent is None:
        print(f"npufarm: farm {config.name!r} stopped", flush=True)
    return 0


def _refused(command: str, reply: Any) -> bool:
    """True (after printing ``npufarm: COMMAND: ERROR`` in one line on stderr) when the farm
    answered the request with an error code."""
    if isinstance(reply, dict) and not reply.get("code"):
        return False
    if isinstance(reply, dict):
        code = reply.get("code")
        error = " ".join(str(reply.get("error") or f"refused with code {code}").split())
    else:
        error = f"unexpected reply {reply!r}"
    print(f"npufarm: {command}: {error}", file=sys.stderr)
    return True


def cmd_inject(args: argparse.Namespace) -> int:
    rule = FaultRule.from_args(args.rule, label="npufarm inject")
    if args.ray:
        return _inject_ray(args.ray, rule)
    reply = admin.inject(_address(args), rule.to_dict())
    if _refused("inject", reply):
        return 1
    print(f"fault rule {reply.get('rule')} injected: {rule.to_dict()}")
    return 0


def _inject_ray(address: str, rule: FaultRule) -> int:
    """``npufarm inject --ray ADDRESS``: the rule reaches the farm of every node it names
    (``node=``; every node without it) through one agent actor per node."""
    from loadtest.ray_nodes import NodeSet, connect  # Ray (the optional extra) +1 s

    try:
        nodes = NodeSet.start(connect(address))
    except RuntimeError as exc:  # no ray installed, no NPU node
        print(f"npufarm: inject: {exc}", file=sys.stderr)
        return 1
    try:
        done = nodes.inject([rule])
    finally:
        nodes.close()
    failed = 0
    for item in done:
        node, reply = item["node_id"][:8], item["reply"]
        if _refused(f"inject (node {node})", reply):
            failed += 1
        else:
            print(f"node {node}: fault rule {reply.get('rule')} injected: {item['rule']}")
    return 1 if failed else 0


def _trace_contents(path: str) -> tuple[int, int] | None:
    """(metadata events, other events) of a written trace file; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle).get("traceEvents", [])
    except (OSError, ValueError, AttributeError):
        return None
    meta = sum(1 for e in events if isinstance(e, dict) and e.get("ph") == "M")
    return meta, len(events) - meta


def cmd_trace(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.out)
    reply = admin.write_trace(_address(args), path)
    if _refused("trace", reply):
        return 1
    found = _trace_contents(path)
    if found is not None and found[1] == 0:
        print(
            f"{found[0]} trace events written to {path}: metadata only, no tasks recorded yet "
            "(a farm started without --trace records from its first `npufarm trace` on)"
        )
        return 0
    print(f"{reply.get('events')} trace events written to {path} (open in ui.perfetto.dev)")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    reply = admin.recover(_address(args), args.kind)
    if _refused("recover", reply):
        return 1
    print("faults cleared" + (f" (kinds: {', '.join(args.kind)})" if args.kind else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    address = _address(args)
    if not args.watch:
        render_status(admin.query_status(address))
        return 0
    if not sys.stdout.isatty():  # a log, not a screen: one table per interval
        while True:  # until Ctrl-C (exit 130) or the farm goes away (exit 2)
            render_status(admin.query_status(address))
            sys.stdout.flush()
            time.sleep(args.interval_s)
    with Live(status_view(admin.query_status(address)), refresh_per_second=4) as live:
        while True:
            time.sleep(args.interval_s)
            live.update(status_view(admin.query_status(address)))


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the named farm (foreground or ``--detach``ed) and wait until its processes and
    shared memory are gone."""
    config = _load(args)
    state = statefile.read_state(statefile.state_path(config))
    if state is None:
        print(f"no running farm named {config.name!r}", file=sys.stderr)
        return 1
    left = admin.stop_farm(state, timeout_s=15.0)
    if left:
        print(f"farm {config.name!r} did not stop: {', '.join(left)} remain", file=sys.stderr)
        return 1
    print(f"farm {config.name!r} (pid {state['pid']}) stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.ray:
        from loadtest.ray_demo import run_ray_demo  # Ray (the optional extra)

        try:
            return run_ray_demo(args.ray, args.out, args.duration_s, args.rate)
        except (RuntimeError, ValueError) as exc:
            print(f"npufarm: demo: {exc}", file=sys.stderr)
            return 1
    from loadtest.demo import run_demo  # +0.16 s of startup: see the module docstring

    try:
        return run_demo(args.config, out_dir=args.out, duration_s=args.duration_s, rate=args.rate)
    except (RuntimeError, ValueError) as exc:  # the load generator's own failures
        print(f"npufarm: demo: {exc}", file=sys.stderr)
        return 1


def cmd_sdk(args: argparse.Namespace) -> int:
    from cabi.build import sdk_tree  # +0.25 s of startup: see the module docstring

    def announce(root: object) -> None:
        print(f"npufarm: sdk: building the toolkit tree in {root} ...", file=sys.stderr)

    try:
        root = sdk_tree(args.prefix, rebuild=args.rebuild, announce=announce)
    except (RuntimeError, ValueError) as exc:  # a compiler error, headers the bridge disagrees with
        print(f"npufarm: sdk: {exc}", file=sys.stderr)
        return 1
    print(root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npufarm",
        description="Run a farm, inspect it, stop it, and run the demo workload.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "also (each with its own --help):\n"
            "  bench    the load generator: npufarm bench --model M --concurrency 1:16:2 ...\n"
            "  report   re-render a saved run: npufarm report RESULT.json\n"
            "  atc      ONNX model to .om: npufarm atc --model=m.onnx --framework=5 "
            "--output=out/m --soc_version=Ascend310\n"
            "  run      a pyACL program against a farm: npufarm run --config C -- python prog.py"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", help="run a farm in the foreground (Ctrl-C stops it), or as a daemon (--detach)"
    )
    _config_args(up)
    up.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once ready (prints the address); stop with down",
    )
    up.add_argument("--log", help="with --detach: log file (default <runtime dir>/<name>.log)")
    up.add_argument(
        "--ready-timeout-s", type=float, default=60.0, help="with --detach: wait this long"
    )
    up.add_argument("--faults", help="fault plan TOML (configs/faults/*.toml)")
    up.add_argument(
        "--fault-log", help="fault log JSONL (default <runtime dir>/<name>-faults.jsonl)"
    )
    up.add_argument("--trace", help="write a Chrome/Perfetto trace JSON here at shutdown")
    up.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    up.add_argument("--watch-parent", type=int, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="table of the cards of a running farm")
    _config_args(status)
    status.add_argument("--watch", action="store_true", help="a live table (Ctrl-C ends it)")
    status.add_argument("--interval-s", type=float, default=1.0, help="refresh period")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop a running farm")
    _config_args(down)
    down.set_defaults(func=cmd_down)
    inject = sub.add_parser("inject", help="add a fault rule to a running farm")
    _config_args(inject)
    inject.add_argument(
        "rule", nargs="+", help="key=value fields, e.g. kind=slow card=1 factor=4 [node=NAME]"
    )
    inject.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="inject into the farms of a Ray cluster's nodes (node= picks one by Ray node id, "
        "Ray node name or farm name)",
    )
    inject.set_defaults(func=cmd_inject)
    trace = sub.add_parser("trace", help="write a running farm's trace (Chrome/Perfetto JSON)")
    _config_args(trace)
    trace.add_argument("out", help="trace JSON path")
    trace.set_defaults(func=cmd_trace)
    recover = sub.add_parser("recover", help="clear injected faults of a running farm")
    _config_args(recover)
    recover.add_argument("--kind", action="append", help="only this kind (repeatable)")
    recover.set_defaults(func=cmd_recover)
    demo = sub.add_parser("demo", help="start a farm, run a multi-card workload, summarise")
    demo.add_argument("--config", help="farm config TOML")
    demo.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    demo.add_argument("--out", help="report folder (default out/demo-<time>)")
    demo.add_argument("--duration-s", type=float, default=8.0, help="length of the load")
    demo.add_argument("--rate", type=float, default=400.0, help="requests/s over all cards")
    demo.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run it on a Ray cluster with a farm per node (a link drop on one node)",
    )
    demo.set_defaults(func=cmd_demo)
    sdk = sub.add_parser(
        "sdk", help="print the root of a CANN-style toolkit tree for C/C++ (built on first use)"
    )
    sdk.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sdk.add_argument("--prefix", help="build or reuse the tree exactly here")
    sdk.add_argument("--rebuild", action="store_true", help="build it again even if current")
    sdk.set_defaults(func=cmd_sdk)
    return parser


def _bench(argv: list[str]) -> int:
    from loadtest.loadgen import bench_main  # +0.15 s of startup: see the module docstring

    return bench_main(argv)


def _report(argv: list[str]) -> int:
    from loadtest.render import report_main  # +0.07 s of startup: see the module docstring

    return report_main(argv)


def _run(argv: list[str]) -> int:
    from npufarm.run import run_main  # +0.14 s of startup: see the module docstring

    return run_main(argv)


def _atc(argv: list[str]) -> int:
    from device.atc import atc_main  # +0.07 s of startup: see the module docstring

    return atc_main(argv)


_DELEGATED = {  # subcommands with their own argument parsers
    "bench": _bench,
    "report": _report,
    "run": _run,
    "atc": _atc,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _DELEGATED:
        logging.basicConfig(
            level=os.environ.get("NPUFARM_LOG_LEVEL", "WARNING"),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        return _DELEGATED[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=os.environ.get("NPUFARM_LOG_LEVEL", level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except NpuFarmError as exc:
        print(f"npufarm: {exc}", file=sys.stderr)
        return 2
    except (OSError, zmq.ZMQError) as exc:  # a socket or file the farm needs: one line
        print(f"npufarm: {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
