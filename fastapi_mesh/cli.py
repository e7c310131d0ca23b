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
        try:
            build_discovery(settings)
        except (NotImplementedError, ValueError) as exc:
            print(f"invalid mesh settings: discovery.backend: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    else:
        print(json.dumps(settings.for_service(args.service).model_dump(mode="json"), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
