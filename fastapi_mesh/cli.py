"""``fastapi-mesh``: check settings and show the effective policy per service.

    fastapi-mesh check                     # validate MESH_* variables; exit 1 naming the bad field
    fastapi-mesh policy user-service       # the effective policy for one upstream, as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from . import __version__
from .discovery import build_discovery
from .settings import MeshSettings

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
    args = parser.parse_args(argv)
    try:
        settings = MeshSettings()
    except (ValidationError, ValueError) as exc:
        print(f"invalid mesh settings: {exc}", file=sys.stderr)
        return 1
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


def _print(data: object) -> int:
    """Print ``data`` as JSON; a reader that stops early (``| head``) is not an error."""
    try:
        print(json.dumps(data, indent=2), flush=True)
    except BrokenPipeError:
        sys.stdout = None  # nothing more can reach the reader
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
