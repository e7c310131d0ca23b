"""Which ``Mesh`` serves an app: the one whose lifespan runs it (kept on ``app.state``), else, for an app
mounted under that one, the process's only running Mesh. ``get_mesh`` and the security checks
(``require_identity``, the ``fastapi-mesh serve`` gate) look it up here; the lifespan registers it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .client import MeshClient
    from .clock import Clock
    from .security.authorization import Authorization
    from .settings import MeshSettings

__all__ = ["STATE_KEY", "RunningMesh", "attach", "running_count", "running_mesh", "started", "stopped"]

#: Attribute of ``app.state`` that holds the running Mesh.
STATE_KEY = "fastapi_mesh"


class RunningMesh(Protocol):
    """What the lookups here need of a ``Mesh``."""

    @property
    def settings(self) -> MeshSettings: ...

    @property
    def client(self) -> MeshClient: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def authorization(self) -> Authorization: ...


#: Meshes whose lifespan is running in this process (for apps mounted under the one that runs it).
_RUNNING: list[RunningMesh] = []


def attach(mesh: RunningMesh, app: Any) -> None:
    """``mesh``'s lifespan runs ``app``: put it on ``app.state``."""
    state = getattr(app, "state", None)
    if state is not None:
        setattr(state, STATE_KEY, mesh)


def started(mesh: RunningMesh) -> None:
    """``mesh`` has started: it counts as running (for apps mounted under its own)."""
    _RUNNING.append(mesh)


def stopped(mesh: RunningMesh) -> None:
    """``mesh``'s lifespan ended."""
    _RUNNING.remove(mesh)


def running_mesh(app: Any) -> RunningMesh | None:
    """The Mesh running ``app``'s lifespan (found on its state), else the process's only running Mesh."""
    mesh: RunningMesh | None = getattr(getattr(app, "state", None), STATE_KEY, None)
    if mesh is None and len(_RUNNING) == 1:
        mesh = _RUNNING[0]  # a mounted sub-app: its own state does not have the parent's Mesh
    return mesh


def running_count() -> int:
    """How many Meshes run in this process."""
    return len(_RUNNING)
