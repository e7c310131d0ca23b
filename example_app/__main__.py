"""``python -m example_app``: run the demo upstream replicas and the ``api-gateway`` in front of them."""

import argparse
import asyncio
import atexit
import functools
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI

from example_app.dnsmasq import CLUSTER_DOMAIN, NAMESPACE, Dnsmasq, DnsmasqError
from example_app.fleet import HOST, Fleet, ReplicaSpec, StartupError
from example_app.gateway import ROUTES, create_gateway

USER_REPLICAS = 3
ORDER_REPLICAS = 2
FLAKY_REPLICA = "user-service-3"
"""The replica that ``--flaky`` makes answer 503 to a fraction of its requests."""
DEFAULT_FLAKY = 0.3
"""The fraction used when ``--flaky`` is given without a value."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of the demo."""
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description=(
            f"Start {USER_REPLICAS} user-service and {ORDER_REPLICAS} order-service replicas on 127.0.0.1 "
            "ephemeral ports, then serve the api-gateway, which reaches them through fastapi-mesh. "
            "Stop with Ctrl-C."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="gateway port on 127.0.0.1; 0 picks a free one (default: 8080)"
    )
    parser.add_argument(
        "--flaky",
        type=float,
        nargs="?",
        const=DEFAULT_FLAKY,
        default=0.0,
        metavar="FRACTION",
        help=(
            f"make {FLAKY_REPLICA} answer 503 to FRACTION of its /api requests "
            f"(default without FRACTION: {DEFAULT_FLAKY}; deterministic, see --seed)"
        ),
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the failure injection (default: 7)")
    parser.add_argument(
        "--dns",
        action="store_true",
        help=(
            "find the replicas with the kubernetes-dns discovery backend, through a local dnsmasq serving "
            "their SRV records (needs dnsmasq: apt-get install dnsmasq-base)"
        ),
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for every replica's /health/ready (default: 15)",
    )
    parser.add_argument("--log-level", default="info", help="gateway log level (default: info)")
    parser.add_argument(
        "--replica-log-level", default="warning", help="upstream replicas' log level (default: warning)"
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.flaky <= 1.0:
        parser.error(f"--flaky must be between 0 and 1, got {args.flaky}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {args.port}")
    return args


def replica_specs(flaky: float, seed: int) -> list[ReplicaSpec]:
    """The demo topology; only :data:`FLAKY_REPLICA` gets ``flaky``, each replica its own seed."""
    specs: list[ReplicaSpec] = []
    for service, count in (("user-service", USER_REPLICAS), ("order-service", ORDER_REPLICAS)):
        for index in range(1, count + 1):
            name = f"{service}-{index}"
            fraction = flaky if name == FLAKY_REPLICA else 0.0
            specs.append(ReplicaSpec(service, name, flaky=fraction, seed=seed + len(specs)))
    return specs


def dns_discovery(dnsmasq: Dnsmasq) -> dict[str, object]:
    """Discovery settings for the gateway when the replicas are found through ``dnsmasq``."""
    return {
        "backend": "kubernetes-dns",
        "nameservers": [dnsmasq.nameserver],
        "namespace": NAMESPACE,
        "cluster_domain": CLUSTER_DOMAIN,
        "port_name": "http",
        "refresh_interval": 2.0,
    }


def _print_banner(fleet: Fleet, port: int, dnsmasq: Dnsmasq | None = None) -> None:
    """Tell the user what runs where and what to try."""
    base = f"http://{HOST}:{port}"
    lines = [""]
    if dnsmasq is not None:
        lines += [
            f"Discovery: kubernetes-dns, SRV records from dnsmasq on {dnsmasq.nameserver} -- try:",
            f"  dig @{HOST} -p {dnsmasq.port} SRV _http._tcp.user-service.{NAMESPACE}.svc.{CLUSTER_DOMAIN}",
            "",
        ]
    lines += ["Upstream replicas:"]
    for replica in fleet.replicas:
        note = f"  flaky: {replica.spec.flaky:.0%} answer 503" if replica.spec.flaky else ""
        lines.append(f"  {replica.spec.name:<16} {replica.url:<24} pid {replica.process.pid}{note}")
    lines += ["", f"api-gateway on {base} -- try:"]
    lines += [f"  curl -i {base}{route}" for route in ROUTES]
    lines += [
        f"  curl -i -X POST {base}/api/orders -H 'content-type: application/json' "
        '-d \'{"user_id": 1, "item": "book"}\'',
        "",
        "Kill a replica's pid to watch the mesh route around it. Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


async def _announce(server: uvicorn.Server, on_started: Callable[[int], None]) -> None:
    """Call ``on_started`` with the bound port once ``server`` is up."""
    while not server.started:
        await asyncio.sleep(0.05)
    on_started(server.servers[0].sockets[0].getsockname()[1])


async def serve_gateway(app: FastAPI, port: int, log_level: str, on_started: Callable[[int], None]) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until Ctrl-C or SIGTERM."""
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level=log_level, lifespan="on"))
    announcer = asyncio.create_task(_announce(server, on_started))
    try:
        await server.serve()
    finally:
        announcer.cancel()
    if not server.started:
        raise StartupError("the api-gateway failed to start (see the log above)")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt, so ``finally`` blocks stop the replicas."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    args = parse_args(argv)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    fleet = Fleet(log_level=args.replica_log_level)
    atexit.register(fleet.stop)
    dnsmasq = Dnsmasq() if args.dns else None
    if dnsmasq is not None:
        atexit.register(dnsmasq.stop)
    try:
        fleet.start(replica_specs(args.flaky, args.seed))
        fleet.wait_ready(args.ready_timeout)
        settings: dict[str, object] = {}
        if dnsmasq is not None:
            dnsmasq.start([(r.spec.service, r.spec.name, r.port) for r in fleet.replicas])
            settings["discovery"] = dns_discovery(dnsmasq)
        gateway = create_gateway(fleet.endpoints(), **settings)
        announce = functools.partial(_print_banner, fleet, dnsmasq=dnsmasq)
        asyncio.run(serve_gateway(gateway, args.port, args.log_level, announce))
    except KeyboardInterrupt:
        pass
    except (StartupError, DnsmasqError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
        if dnsmasq is not None:
            dnsmasq.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
