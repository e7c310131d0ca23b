"""``fastapi-mesh``: check settings, show the effective policy per service, render manifests from them.

    fastapi-mesh check                     # validate MESH_* variables; exit 1 naming the bad field
    fastapi-mesh policy user-service       # the effective policy for one upstream, as JSON
    fastapi-mesh render istio --service user-service   # its DestinationRule and VirtualService
    fastapi-mesh render k8s --image registry.example.com/api:1.0   # this service's Deployment
    fastapi-mesh serve app:app --host 0.0.0.0 --port 8443   # uvicorn with the mesh's mTLS (MESH_MTLS__*)
    fastapi-mesh certs --out certs --trust-domain cluster.local api-gateway user-service   # development certs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError

from . import __version__, render
from .discovery import build_discovery
from .settings import DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN, MeshSettings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastapi-mesh", description="Check fastapi-mesh settings and show the effective policy per service."
    )
    parser.add_argument("--version", action="version", version=f"fastapi-mesh {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="validate the MESH_* settings and print them as JSON")
    policy = commands.add_parser("policy", help="print the effective policy for one upstream service")
    policy.add_argument("service")
    _add_render(commands)
    _add_serve(commands)
    _add_certs(commands)
    args = parser.parse_args(argv)
    if args.command == "certs":  # needs no settings: it makes the files the settings will name
        return _certs(args)
    try:
        variables = _read_env_file(args.env_file) if getattr(args, "env_file", None) else {}
    except (OSError, ValueError) as exc:
        print(f"cannot read --env-file: {exc}", file=sys.stderr)
        return 1
    try:
        with _environment(variables):
            settings = MeshSettings()
    except (ValidationError, ValueError) as exc:
        print(f"invalid mesh settings: {exc}", file=sys.stderr)
        return 1
    if args.command == "render":
        return _render(args, settings)
    if args.command == "serve":
        return _serve(args, settings)
    if args.command == "check":
        if settings.discovery.backend == "custom" and settings.discovery.custom_class is None:
            # The application passes its own Discovery object; nothing here can see it, or fault it.
            print("note: discovery.backend is 'custom': the Discovery object is the application's", file=sys.stderr)
        else:
            try:
                build_discovery(settings)
            except (NotImplementedError, ValueError) as exc:
                print(f"invalid mesh settings: discovery.backend: {exc}", file=sys.stderr)
                return 1
        return _print(settings.model_dump(mode="json"))
    return _print(settings.for_service(args.service).model_dump(mode="json"))


def _add_render(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env-file",
        metavar="PATH",
        help="read MESH_* settings from this file of KEY=VALUE lines too (as kustomize and docker read them)",
    )
    common.add_argument("--format", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")
    parser = commands.add_parser("render", help="print Istio or Kubernetes manifests generated from the settings")
    targets = parser.add_subparsers(dest="target", required=True)
    istio = targets.add_parser(
        "istio", parents=[common], help="the DestinationRule and VirtualService of one upstream service"
    )
    istio.add_argument("--service", required=True, help="the upstream service, as the mesh names it")
    k8s = targets.add_parser(
        "k8s", parents=[common], help="a Deployment with this service's probes, grace period and MESH_* env"
    )
    k8s.add_argument("--image", help="the container image (default: <service_name>:latest)")
    k8s.add_argument("--port", type=int, default=8080, help="the container port, named http (default: 8080)")


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "serve",
        help="run an ASGI app under uvicorn with the mesh's mTLS (MESH_MTLS__*): client certificates required",
        description="Run an ASGI app under uvicorn. With MESH_MTLS__ENABLED=true: TLS 1.2+, client certificates "
        "signed by MESH_MTLS__CA_PATH required, the caller's certificate in scope['extensions']['tls'], "
        "mtls.allow enforced, files reloaded when they change, and MESH_MTLS__PLAIN_PORT for probes and metrics.",
    )
    parser.add_argument("app", help="the application, as module:attribute (e.g. app:app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug", "trace"), help="uvicorn's log level"
    )
    parser.add_argument("--app-dir", default=".", help="directory to import the app from (default: .)")


def _serve(args: argparse.Namespace, settings: MeshSettings) -> int:
    try:
        from .security.server import serve
    except ImportError as exc:  # pragma: no cover - uvicorn is what serves
        print(f"fastapi-mesh serve needs uvicorn (pip install uvicorn): {exc}", file=sys.stderr)
        return 1
    app_dir = os.path.abspath(args.app_dir)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        return serve(
            args.app, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level, settings=settings
        )
    except ValueError as exc:
        print(f"invalid mesh settings: {exc}", file=sys.stderr)
        return 1


def _add_certs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "certs",
        help="create a development CA and a certificate with a SPIFFE ID for each service",
        description="Create DIR/ca.crt and DIR/ca.key (or reuse them) and, per service, DIR/<service>/tls.crt, "
        "tls.key and ca.crt, with the URI SAN spiffe://<trust-domain>/ns/<namespace>/sa/<service> and DNS SANs.",
    )
    parser.add_argument("services", nargs="+", metavar="SERVICE", help="a service (account) name")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    parser.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN, help="SPIFFE trust domain (default: %(default)s)"
    )
    parser.add_argument(
        "--namespace", default=DEFAULT_NAMESPACE, help="Kubernetes namespace in the IDs (default: %(default)s)"
    )
    parser.add_argument(
        "--dns", action="append", default=[], metavar="NAME", help="another DNS name or IP for every certificate"
    )


def _certs(args: argparse.Namespace) -> int:
    from .security.certs import write_dev_certificates

    try:
        issued = write_dev_certificates(
            args.out, args.services, trust_domain=args.trust_domain, namespace=args.namespace, dns_names=args.dns
        )
    except (OSError, ValueError) as exc:
        print(f"cannot create certificates: {exc}", file=sys.stderr)
        return 1
    out = args.out.rstrip("/") or "/"
    services = {
        name: {
            "identity": identity,
            "cert_path": f"{out}/{name}/tls.crt",
            "key_path": f"{out}/{name}/tls.key",
            "ca_path": f"{out}/{name}/ca.crt",
        }
        for name, identity in issued.items()
    }
    return _print({"ca": f"{out}/ca.crt", "services": services})


def _render(args: argparse.Namespace, settings: MeshSettings) -> int:
    command = f"fastapi-mesh render {args.target}"
    if args.target == "istio":
        command += f" --service {args.service}"
        documents = render.istio_manifests(settings, args.service)
        if settings.mode == "library":
            print(
                "note: mode is 'library', so fastapi-mesh retries too; run the callers with MESH_MODE=istio, "
                "or every retry of theirs is retried again by the sidecar",
                file=sys.stderr,
            )
    else:
        image = args.image or f"{settings.service_name}:latest"
        documents = [render.deployment(settings, image=image, port=args.port)]
    if args.env_file:
        command += f" --env-file {args.env_file}"
    if args.format == "json":
        return _print({"apiVersion": "v1", "kind": "List", "items": documents})
    header = f"Generated by `{command}`\nfrom the MESH_* settings; do not edit by hand."
    return _write(render.to_yaml(documents, header=header))


def _read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines, values taken as written (no quotes removed); blank lines and ``#`` comments skipped."""
    variables: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {text[:80]!r}")
            variables[key.strip()] = value
    return variables


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """``variables`` set in ``os.environ`` while the block runs, the earlier values back afterwards."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _print(data: object) -> int:
    """Print ``data`` as JSON; a reader that stops early (``| head``) is not an error."""
    return _write(json.dumps(data, indent=2) + "\n")


def _write(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = None  # nothing more can reach the reader
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
