"""``python -m example_app``: run the demo upstream replicas and the ``api-gateway`` in front of them.

``--mtls`` makes every hop mutual TLS: development certificates from ``fastapi-mesh certs`` in a temporary
directory, each replica and the gateway served by the mesh's server (client certificates required, probes on
a plain port), the replicas accepting only the gateway's identity, and the gateway calling them over mTLS.
"""

import argparse
import asyncio
import atexit
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from example_app.dnsmasq import CLUSTER_DOMAIN, NAMESPACE, Dnsmasq, DnsmasqError
from example_app.fleet import HOST, Fleet, Replica, ReplicaSpec, StartupError, _child_env, free_port
from example_app.gateway import ROUTES, SERVICE_NAME, create_gateway
from example_app.upstream import _watch_parent, create_upstream_app
from fastapi_mesh import MeshSettings
from fastapi_mesh.security.certs import spiffe_id, write_dev_certificates

USER_REPLICAS = 3
ORDER_REPLICAS = 2
FLAKY_REPLICA = "user-service-3"
"""The replica that ``--flaky`` makes answer 503 to a fraction of its requests."""
DEFAULT_FLAKY = 0.3
"""The fraction used when ``--flaky`` is given without a value."""
MTLS_CLIENT = "demo-client"
"""With ``--mtls``: the identity whose certificate the banner's ``curl`` commands present to the gateway."""


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
        "--mtls",
        action="store_true",
        help=(
            "mutual TLS on every hop, with development certificates (fastapi-mesh certs) in a temporary "
            "directory; the replicas accept only the gateway's identity; probes and /metrics on plain ports"
        ),
    )
    # One mTLS replica, as ``--mtls`` starts it (not for direct use).
    parser.add_argument("--serve-replica", nargs=2, metavar=("SERVICE", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--plain-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--replica-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
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


def mtls_settings(certs: Path, service: str, **extra: Any) -> dict[str, Any]:
    """The ``mtls`` settings of ``service``: its certificate from ``certs`` (as ``fastapi-mesh certs`` wrote it)."""
    directory = certs / service
    return {
        "enabled": True,
        "cert_path": str(directory / "tls.crt"),
        "key_path": str(directory / "tls.key"),
        "ca_path": str(directory / "ca.crt"),
        **extra,
    }


def make_certificates() -> Path:
    """A CA and a certificate per service (and one for the demo's ``curl``) in a temporary directory."""
    certs = Path(tempfile.mkdtemp(prefix="fastapi-mesh-demo-certs-"))
    atexit.register(shutil.rmtree, certs, True)
    services = sorted({spec.service for spec in replica_specs(0.0, 0)})
    write_dev_certificates(certs, [SERVICE_NAME, *services, MTLS_CLIENT])
    return certs


@dataclasses.dataclass
class TlsReplica(Replica):
    """An mTLS replica: ``port`` is its plain probe port, ``tls_port`` the port it serves callers on."""

    tls_port: int = 0

    @property
    def tls_url(self) -> str:
        return f"https://{HOST}:{self.tls_port}"


@dataclasses.dataclass
class MtlsFleet(Fleet):
    """Replicas served by the mesh's server with mTLS; probed on their plain ports, called on their TLS ports."""

    certs: Path = Path()

    def start(self, specs: Iterable[ReplicaSpec]) -> None:
        env = _child_env()
        for spec in specs:
            plain, tls = free_port(), free_port()
            command = [
                sys.executable,
                "-m",
                "example_app",
                "--serve-replica",
                spec.service,
                spec.name,
                "--certs",
                str(self.certs),
                "--port",
                str(tls),
                "--plain-port",
                str(plain),
                "--flaky",
                str(spec.flaky),
                "--replica-seed",
                str(spec.seed),
                "--log-level",
                self.log_level,
                "--parent-pid",
                str(os.getpid()),
            ]
            process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            self.replicas.append(TlsReplica(spec, plain, process, tls_port=tls))

    def endpoints(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for replica in self.replicas:
            assert isinstance(replica, TlsReplica)
            result.setdefault(replica.spec.service, []).append(replica.tls_url)
        return result


def serve_replica(args: argparse.Namespace) -> int:
    """One mTLS replica (``--serve-replica SERVICE NAME``): only the gateway's identity may call it."""
    from fastapi_mesh.security.server import MeshServerConfig

    service, name = args.serve_replica
    certs = Path(args.certs)
    allow = [spiffe_id(SERVICE_NAME)]
    mtls = mtls_settings(certs, service, plain_port=args.plain_port, allow=allow)
    settings = MeshSettings(service_name=service, mtls=mtls)
    app = create_upstream_app(service, name, flaky=args.flaky, seed=args.replica_seed)
    config = MeshServerConfig(app, settings=settings, host=HOST, port=args.port, log_level=args.log_level)
    server = uvicorn.Server(config)

    async def run() -> None:
        watcher = asyncio.create_task(_watch_parent(server, args.parent_pid)) if args.parent_pid else None
        try:
            await server.serve()
        finally:
            if watcher is not None:
                watcher.cancel()

    asyncio.run(run())
    return 0 if server.started else 1


def _print_mtls_banner(fleet: Fleet, port: int, certs: Path, plain_port: int) -> None:
    """What runs where with ``--mtls``, and the ``curl`` commands that present the demo client's certificate."""
    base = f"https://{HOST}:{port}"
    client = certs / MTLS_CLIENT
    lines = ["", f"mTLS: development certificates in {certs} (made with `fastapi-mesh certs`)", ""]
    lines += [f"Upstream replicas (mTLS, only {spiffe_id(SERVICE_NAME)} may call them):"]
    for replica in fleet.replicas:
        assert isinstance(replica, TlsReplica)
        lines.append(
            f"  {replica.spec.name:<16} {replica.tls_url:<25} probes {replica.url:<24} pid {replica.process.pid}"
        )
    lines += [
        "",
        f"api-gateway on {base}, probes and /metrics on http://{HOST}:{plain_port} -- try, as {MTLS_CLIENT}:",
        f"  CURL='curl --cacert {certs / 'ca.crt'} --cert {client / 'tls.crt'} --key {client / 'tls.key'}'",
    ]
    lines += [f"  $CURL -i {base}{route}" for route in ROUTES if not route.startswith(("/health", "/metrics"))]
    lines += [f"  curl -i http://{HOST}:{plain_port}/health/ready", f"  curl -i http://{HOST}:{plain_port}/metrics"]
    first = fleet.replicas[0]
    assert isinstance(first, TlsReplica)
    lines += [
        "",
        "A replica refuses any caller but the gateway (403), and a caller without a certificate cannot connect:",
        f"  $CURL -i {first.tls_url}/api/users",
        f"  curl -i --cacert {certs / 'ca.crt'} {base}/api/users",
        "",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


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


async def serve_gateway(
    app: FastAPI, port: int, log_level: str, on_started: Callable[[int], None], settings: MeshSettings | None = None
) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until Ctrl-C or SIGTERM; with ``settings``, through the mesh's server
    (``fastapi-mesh serve``: its mTLS and plain port)."""
    if settings is not None:
        from fastapi_mesh.security.server import MeshServerConfig

        config: uvicorn.Config = MeshServerConfig(app, settings=settings, host=HOST, port=port, log_level=log_level)
    else:
        config = uvicorn.Config(app, host=HOST, port=port, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
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
    if args.serve_replica:
        return serve_replica(args)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _interrupt)
    certs = make_certificates() if args.mtls else None
    fleet = Fleet(log_level=args.replica_log_level) if certs is None else MtlsFleet(args.replica_log_level, certs=certs)
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
        served: MeshSettings | None = None
        if certs is not None:
            plain_port = free_port()
            settings["mtls"] = mtls_settings(certs, SERVICE_NAME, plain_port=plain_port)
            announce: Callable[[int], None] = functools.partial(
                _print_mtls_banner, fleet, certs=certs, plain_port=plain_port
            )
        else:
            announce = functools.partial(_print_banner, fleet, dnsmasq=dnsmasq)
        gateway = create_gateway(fleet.endpoints(), **settings)
        if certs is not None:
            served = gateway.state.mesh.settings
        asyncio.run(serve_gateway(gateway, args.port, args.log_level, announce, served))
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
