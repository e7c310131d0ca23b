"""The mTLS files both sides load and watch: the certificate, its key and the CA bundle.

``WatchedFiles`` tells when the files changed and then stayed the same for one more look (a writer replacing
the certificate, then the key, is not caught in between); the outbound ``ClientTLS`` and the server's
``ServerTLS`` load a new context then. ``client_tls_context`` and ``load_key_pair`` fail naming the setting
of a file that does not load.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import MtlsConfig

__all__ = ["Signature", "WatchedFiles", "client_tls_context", "load_key_pair"]

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

    def settled(self, *, settle: bool = True) -> Signature | None:
        """The files' signature when it differs from ``loaded`` and, with ``settle``, is the same as at the
        previous look; else None."""
        signature = self.signature()
        if signature == self.loaded:
            self._pending = None
            return None
        if settle and signature != self._pending:
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
