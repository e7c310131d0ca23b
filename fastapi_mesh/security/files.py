"""The mTLS files both sides load and watch: the certificate, its key and the CA bundle.

``WatchedFiles`` tells when the files changed and then stayed the same for one more look (a writer replacing
the certificate, then the key, is not caught in between); the outbound ``ClientTLS`` and the server's
``ServerTLS`` load a new context then; ``FollowedKeyPair`` loads it into a context already in use (Consul's
client). ``client_tls_context`` and ``load_key_pair`` fail naming the setting
of a file that does not load.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import MtlsConfig

__all__ = ["FollowedKeyPair", "Signature", "WatchedFiles", "client_tls_context", "load_key_pair"]

logger = logging.getLogger("fastapi_mesh.security")

#: What ``os.stat`` says of a set of files.
Signature = tuple[object, ...]


class WatchedFiles:
    """A set of files as ``os.stat`` sees them (following symlinks, as a Kubernetes secret volume swaps its
    ``..data`` link; a missing file by its error number), and whether a change to them has settled.

    >>> files = WatchedFiles("/nonexistent/tls.crt")
    >>> files.settled() is None  # nothing changed since the start
    True
    """

    def __init__(self, *paths: str) -> None:
        self.paths = paths
        #: The signature of the files now in use (set it once a changed set is taken up).
        self.loaded: Signature = self.signature()
        self._pending: Signature | None = None

    def signature(self) -> Signature:
        parts: list[object] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError as exc:
                parts.append(exc.errno)
            else:
                parts.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
        return tuple(parts)

    def settled(self) -> Signature | None:
        """The files' signature when it differs from ``loaded`` and is the same as at the previous look;
        else None."""
        signature = self.signature()
        if signature == self.loaded:
            self._pending = None
            return None
        if signature != self._pending:
            self._pending = signature  # changed since the last look: wait for it to settle
            return None
        self._pending = None
        return signature


def load_key_pair(context: ssl.SSLContext, cert_path: str, key_path: str | None) -> None:
    """``context.load_cert_chain``; a pair that does not load fails naming ``mtls.cert_path/key_path``."""
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"mtls.cert_path/key_path: cannot load {cert_path!r} with key {key_path!r}: {exc}") from exc


def client_tls_context(
    mtls: MtlsConfig, *, cafile: str | None, ca_setting: str = "mtls.ca_path", peer: str = "upstreams"
) -> ssl.SSLContext:
    """A client context that verifies servers against ``cafile`` (None: the system store) and presents the
    mTLS client certificate when mTLS is on. A file that cannot be loaded fails naming ``ca_setting``."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{ca_setting}: cannot load the CA bundle {cafile!r} for {peer}: {exc}") from exc
    if mtls.enabled:
        assert mtls.cert_path is not None
        load_key_pair(context, mtls.cert_path, mtls.key_path)
    return context


class FollowedKeyPair:
    """Keeps a live client ``context`` in step with the mTLS files, for a pool that cannot be handed a new
    context (an ``httpx.AsyncClient`` of its own, as Consul's): every ``interval`` seconds of ``clock``,
    :meth:`refresh` looks at the files; a changed set that has settled and loads as a whole (``build`` makes a
    fresh context from it, to check) is loaded into ``context`` itself, so that new connections present the
    new certificate and trust the new CA bundle, while open ones finish. A CA taken out of the bundle stays
    trusted by this context until a restart (loading adds to a context's trust store, never removes). A set
    that does not load keeps the old pair and logs one error until the files change again.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        build: Callable[[], ssl.SSLContext],
        mtls: MtlsConfig,
        cafile: str | None,
        *,
        clock: Callable[[], float],
        peer: str,
    ) -> None:
        assert mtls.cert_path is not None
        self.context = context
        self._build = build
        self._cert_path, self._key_path, self._cafile = mtls.cert_path, mtls.key_path, cafile
        self._files = WatchedFiles(*(path for path in (mtls.cert_path, mtls.key_path, cafile) if path))
        self._interval = mtls.reload_interval
        self._clock = clock
        self._next_check = clock() + self._interval
        self._failed: Signature | None = None
        self._peer = peer
        #: How many times a changed set of files was loaded.
        self.reloads = 0

    def refresh(self) -> bool:
        """Look at the files when due and load a changed set; True when it was loaded now."""
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval
        files = self._files
        signature = files.settled()
        if signature is None or signature == self._failed:
            return False
        try:
            self._build()  # the new set loads as a whole, or the live context is left alone
            load_key_pair(self.context, self._cert_path, self._key_path)
            if self._cafile is not None:
                self.context.load_verify_locations(cafile=self._cafile)
        except (ValueError, OSError, ssl.SSLError) as exc:
            self._failed = signature
            logger.error("mtls (%s): %s; new connections keep the certificate loaded before", self._peer, exc)
            return False
        files.loaded, self._failed = signature, None
        self.reloads += 1
        logger.info("mtls (%s): loaded %s for new connections", self._peer, self._cert_path)
        return True
