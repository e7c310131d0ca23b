"""Outbound mTLS: the one ``ssl.SSLContext`` every pool shares, the server's identity checked in each TLS
handshake, and certificate rotation.

**Identity.** With ``mtls.enabled``, a handshake to an endpoint succeeds only when the server's certificate,
verified against ``mtls.ca_path``, carries an identity the call's service expects: a SPIFFE ID (URI SAN) or
a DNS SAN matching ``services.<name>.mtls.expected_identities``, else ``mtls.expected_identities``, else
any identity in ``mtls.trust_domain``. The context's ``sslobject_class`` runs the check as the last step of
the handshake, on whichever backend and event loop, so a refused server has received no byte of the
request. The attempt fails with :class:`ServerIdentityMismatch`, an ``httpx.ConnectError``: "not sent", so
the retry layer may send even a ``POST`` to another endpoint. The same call never goes back to that
endpoint: when the balancer has nothing else left, the next attempt ends at once (``NoHealthyEndpoints``,
which the retry layer reports with the mismatch as the cause) without connecting. Pools are kept apart by
expected identities, so a connection checked for one service never carries a call of a service expecting
others.

**Rotation.** The certificate, key and CA files are looked at (``os.stat``) at most every
``mtls.reload_interval`` seconds, on the way of a call. A set that changed, and then stayed the same for
one more look, is loaded into a new context that new connections use (a CA taken out of the bundle is no
longer trusted); open connections finish on the one they were made with. A set that cannot be loaded (a
file half written, a key that does not match the certificate, a file missing) leaves the last good context
in place and logs one error until the files change again.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from ..context import EXTENSION
from ..errors import NoHealthyEndpoints
from ..security.files import Signature, WatchedFiles, client_tls_context
from ..settings import DEFAULT_TRUST_DOMAIN

if TYPE_CHECKING:
    from ..settings import MeshSettings, MtlsConfig

__all__ = ["ClientTLS", "ExpectedIdentities", "ServerIdentityMismatch", "identities_of"]

logger = logging.getLogger("fastapi_mesh.security")

#: Request extension holding the endpoints (host, port) that refused a call's server identity check.
REFUSED_EXTENSION = "mesh.identity_refused"
#: Services whose expected identities are remembered at most (configured and discovered names).
_MAX_SERVICES = 4096
#: Mismatches logged at most once each, remembered up to this many.
_MAX_REPORTED = 1024
#: DNS names of a refused certificate shown in the error message (all are in ``ServerIdentityMismatch.dns_names``).
_SHOWN_NAMES = 3


class ExpectedIdentities:
    """The server identities one service accepts: SPIFFE IDs (matched against the certificate's URI SANs)
    and DNS names (matched against its DNS SANs, a ``*.`` SAN covering one label). A pattern ending in
    ``*`` matches a prefix, one starting with ``*`` a suffix, ``*`` alone any identity. No patterns: any
    identity in ``trust_domain`` (``spiffe://<trust_domain>/...``, or a DNS name under it).

    >>> expected = ExpectedIdentities(["spiffe://cluster.local/ns/payments/*"])
    >>> expected.accepts(["spiffe://cluster.local/ns/payments/sa/api"], [])
    True
    >>> expected.accepts(["spiffe://cluster.local/ns/default/sa/api"], ["payments.svc.cluster.local"])
    False
    >>> ExpectedIdentities().accepts([], ["payments.default.svc.cluster.local"])
    True
    >>> str(ExpectedIdentities(trust_domain="example.org"))
    'an identity in trust domain example.org'
    """

    __slots__ = (
        "_any",
        "_dns",
        "_dns_prefixes",
        "_dns_suffixes",
        "_spiffe",
        "_spiffe_prefixes",
        "_spiffe_suffixes",
        "patterns",
        "trust_domain",
    )

    def __init__(self, patterns: Iterable[str] = (), *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        #: The patterns, in the order given (duplicates dropped).
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        self.trust_domain = trust_domain
        self._any = "*" in self.patterns
        spiffe: set[str] = set()
        dns: set[str] = set()
        spiffe_prefixes: list[str] = []
        dns_prefixes: list[str] = []
        spiffe_suffixes: list[str] = []
        dns_suffixes: list[str] = []
        for pattern in self.patterns:
            if pattern == "*":
                continue
            if pattern.endswith("*"):
                body = pattern[:-1]
                if body.startswith("spiffe://"):
                    spiffe_prefixes.append(body)
                else:
                    dns_prefixes.append(body.lower())
            elif pattern.startswith("*"):
                body = pattern[1:]
                if "/" in body:
                    spiffe_suffixes.append(body)
                else:
                    dns_suffixes.append(_dns_form(body))
            elif pattern.startswith("spiffe://"):
                spiffe.add(pattern)
            else:
                dns.add(_dns_form(pattern))
        self._spiffe = frozenset(spiffe)
        self._dns = frozenset(dns)
        self._spiffe_prefixes = tuple(spiffe_prefixes)
        self._dns_prefixes = tuple(dns_prefixes)
        self._spiffe_suffixes = tuple(spiffe_suffixes)
        self._dns_suffixes = tuple(dns_suffixes)

    def accepts(self, spiffe_ids: Sequence[str], dns_names: Sequence[str]) -> bool:
        """Whether a certificate with these SPIFFE IDs (URI SANs) and DNS SANs is acceptable."""
        if not self.patterns:
            domain = self.trust_domain
            root = f"spiffe://{domain}/"
            under = "." + domain
            return any(uri.startswith(root) for uri in spiffe_ids) or any(
                name == domain or name.endswith(under) for name in map(_dns_form, dns_names)
            )
        if self._any:
            return bool(spiffe_ids or dns_names)
        for uri in spiffe_ids:
            if uri in self._spiffe or uri.startswith(self._spiffe_prefixes) or uri.endswith(self._spiffe_suffixes):
                return True
        for name in map(_dns_form, dns_names):
            if name in self._dns or name.startswith(self._dns_prefixes) or name.endswith(self._dns_suffixes):
                return True
            if name.startswith("*.") and self._dns:  # a wildcard SAN covers one label of an expected name
                parent = name[1:]
                if any(e.endswith(parent) and "." not in e[: -len(parent)] and len(e) > len(parent) for e in self._dns):
                    return True
        return False

    def __str__(self) -> str:
        if not self.patterns:
            return f"an identity in trust domain {self.trust_domain}"
        return " or ".join(self.patterns)

    def __repr__(self) -> str:
        return f"ExpectedIdentities({list(self.patterns)!r}, trust_domain={self.trust_domain!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExpectedIdentities):
            return NotImplemented
        return self.patterns == other.patterns and self.trust_domain == other.trust_domain

    def __hash__(self) -> int:
        return hash((self.patterns, self.trust_domain))


def _dns_form(name: str) -> str:
    return name.lower().rstrip(".")


def identities_of(certificate: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The SPIFFE IDs (``spiffe://`` URI SANs) and DNS SANs of a certificate as ``SSLObject.getpeercert()``
    gives it.

    >>> identities_of({"subjectAltName": (("URI", "spiffe://cluster.local/ns/a/sa/b"), ("DNS", "b.a.svc"),
    ...                                   ("IP Address", "10.0.0.1"))})
    (['spiffe://cluster.local/ns/a/sa/b'], ['b.a.svc'])
    """
    spiffe_ids: list[str] = []
    dns_names: list[str] = []
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            spiffe_ids.append(value)
        elif kind == "DNS":
            dns_names.append(value)
    return spiffe_ids, dns_names


class ServerIdentityMismatch(httpx.ConnectError):
    """The endpoint's certificate is valid but names nobody the service expects: the handshake was broken
    off before the request was sent (so, as any ``httpx.ConnectError``, the attempt counts as not sent).

    ``service``, ``endpoint``, ``expected`` (the identities accepted, described), ``spiffe_ids`` and
    ``dns_names`` (what the certificate carries; ``presented``: both) say who was expected and who answered.

    >>> error = ServerIdentityMismatch(
    ...     service="payments", endpoint="https://10.0.0.7:8443",
    ...     expected="spiffe://cluster.local/ns/default/sa/payments",
    ...     spiffe_ids=["spiffe://cluster.local/ns/default/sa/intruder"], dns_names=["intruder.default.svc"])
    >>> print(error)  # doctest: +NORMALIZE_WHITESPACE
    server identity refused for service 'payments' at https://10.0.0.7:8443: it presented
    spiffe://cluster.local/ns/default/sa/intruder (DNS intruder.default.svc), expected
    spiffe://cluster.local/ns/default/sa/payments
    """

    def __init__(
        self,
        *,
        service: str | None,
        endpoint: str,
        expected: str,
        spiffe_ids: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        subject: str | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        super().__init__(
            f"server identity refused for {f'service {service!r}' if service is not None else 'an upstream'} at "
            f"{endpoint}: it presented {_shown(spiffe_ids, dns_names, subject)}, expected {expected}",
            request=request,
        )
        self.service = service
        self.endpoint = endpoint
        self.expected = expected
        self.spiffe_ids = tuple(spiffe_ids)
        self.dns_names = tuple(dns_names)

    @property
    def presented(self) -> tuple[str, ...]:
        """Every identity the certificate carries: its SPIFFE IDs, then its DNS names."""
        return self.spiffe_ids + self.dns_names


def _shown(spiffe_ids: Sequence[str], dns_names: Sequence[str], subject: str | None) -> str:
    """The identities of a certificate for a message: its SPIFFE IDs, and some of its DNS names."""
    if not spiffe_ids and not dns_names:
        return "no SPIFFE ID or DNS name" + (f" (subject {subject})" if subject else "")
    names = ", ".join(dns_names[:_SHOWN_NAMES]) + (
        f" and {len(dns_names) - _SHOWN_NAMES} more" if len(dns_names) > _SHOWN_NAMES else ""
    )
    if not spiffe_ids:
        return f"DNS {names}"
    return ", ".join(spiffe_ids) + (f" (DNS {names})" if dns_names else "")


class _Refused(ssl.SSLCertVerificationError):
    """Raised inside the handshake; the connection layer turns it into ``ServerIdentityMismatch``."""

    def __init__(
        self,
        service: str | None,
        expected: ExpectedIdentities,
        spiffe_ids: list[str],
        dns_names: list[str],
        subject: str | None,
    ) -> None:
        super().__init__(f"server identity {_shown(spiffe_ids, dns_names, subject)} is not {expected}")
        self.service = service
        self.expected = expected
        self.spiffe_ids = spiffe_ids
        self.dns_names = dns_names
        self.subject = subject


#: What the handshakes of the current attempt must find: (service, expected identities, egress proxy host).
_TARGET: contextvars.ContextVar[tuple[str | None, ExpectedIdentities, str | None] | None] = contextvars.ContextVar(
    "fastapi_mesh_tls_target", default=None
)


class _VerifyingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` whose handshake also checks the server's identity (the chain is OpenSSL's to check)."""

    #: The identities expected where no attempt says (a context used outside the connection layer, an
    #: egress proxy in front of the endpoints): set on the subclass each ``ClientTLS`` makes.
    fallback: ClassVar[ExpectedIdentities] = ExpectedIdentities()

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError & co. until the handshake is complete
        target = _TARGET.get()
        service: str | None = None
        expected = self.fallback
        if target is not None:
            service, expected, proxy_host = target
            if proxy_host is not None and self.server_hostname == proxy_host:
                expected = self.fallback
        certificate = self.getpeercert() or {}
        spiffe_ids, dns_names = identities_of(certificate)
        if not expected.accepts(spiffe_ids, dns_names):
            raise _Refused(service, expected, spiffe_ids, dns_names, _subject(certificate))


def _subject(certificate: Mapping[str, Any]) -> str | None:
    parts = [f"{key}={value}" for rdn in certificate.get("subject", ()) for key, value in rdn]
    return ", ".join(parts) or None


def _refusal(exc: BaseException) -> _Refused | None:
    """The identity refusal somewhere in ``exc``'s causes (backends wrap it once or twice)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, _Refused):
            return current
        seen += 1
        current = current.__cause__ or current.__context__
    return None


class ClientTLS:
    """The mesh's outbound mTLS: one ``ssl.SSLContext`` (the client certificate, the CA, TLS 1.2 or newer,
    TLS 1.3 when the server offers it) for every pool, the identities each service's servers must present,
    and rotation of the files. Both connection backends take one (``tls=``); ``build_connection_pool``
    makes it from the settings when ``mtls.enabled``. Files that cannot be loaded at start fail here,
    naming the setting::

        tls = ClientTLS.from_settings(settings)
        tls.expected("payments")      # ExpectedIdentities(['spiffe://.../sa/payments'], ...)
        context = tls.current()       # the context new connections use (files looked at when due)
    """

    def __init__(
        self,
        mtls: MtlsConfig,
        expected: Mapping[str, Sequence[str]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not mtls.enabled or not (mtls.cert_path and mtls.key_path and mtls.ca_path):
            raise ValueError("ClientTLS needs mtls.enabled with cert_path, key_path and ca_path")
        self._mtls = mtls
        self._files = WatchedFiles(mtls.cert_path, mtls.key_path, mtls.ca_path)
        #: What every service without its own list expects (also: handshakes no attempt speaks for).
        self.default = ExpectedIdentities(mtls.expected_identities, trust_domain=mtls.trust_domain)
        self._overrides = {name: tuple(patterns) for name, patterns in (expected or {}).items()}
        self._interned: dict[tuple[str, ...], ExpectedIdentities] = {self.default.patterns: self.default}
        self._by_service: dict[str | None, ExpectedIdentities] = {None: self.default}
        self._sslobject_class = type("MeshVerifyingSSLObject", (_VerifyingSSLObject,), {"fallback": self.default})
        self._clock = clock
        self._interval = mtls.reload_interval
        self._context = self._build()
        #: The signature of the last set of files that did not load (not tried again until they change).
        self._failed: Signature | None = None
        self._next_check = clock() + self._interval
        self._reported: set[tuple[str | None, str, tuple[str, ...]]] = set()
        #: How many times a changed set of files was loaded since start.
        self.reloads = 0

    @classmethod
    def from_settings(cls, settings: MeshSettings) -> ClientTLS:
        """From ``settings.mtls`` and each ``services.<name>.mtls.expected_identities``."""
        expected = {
            name: override.mtls.expected_identities
            for name, override in settings.services.items()
            if override.mtls is not None and override.mtls.expected_identities is not None
        }
        return cls(settings.mtls, expected)

    # ------------------------------------------------------------------------------------------ context

    @property
    def context(self) -> ssl.SSLContext:
        """The context new connections use now (without looking at the files)."""
        return self._context

    def current(self) -> ssl.SSLContext:
        """The context for a new connection, after a look at the files when ``reload_interval`` has passed."""
        now = self._clock()
        if now >= self._next_check:
            self._check(now)
        return self._context

    def _check(self, now: float) -> None:
        """Load the files once they changed and then stayed the same for one look; a set that does not load
        keeps the current context and logs one error, until the files change again."""
        self._next_check = now + self._interval
        files = self._files
        signature = files.settled()
        if signature is None or signature == self._failed:
            return
        try:
            context = self._build()
        except ValueError as exc:
            self._failed = signature
            logger.error("mtls: %s; new connections keep the certificate and CA loaded before", exc)
            return
        if files.signature() != signature:  # written to while being read: look again at the next call
            self._next_check = now
            return
        self._context, files.loaded, self._failed = context, signature, None
        self.reloads += 1
        logger.info("mtls: loaded %s and the CA for new connections", _describe(self._mtls.cert_path))

    def _build(self) -> ssl.SSLContext:
        context = client_tls_context(self._mtls, cafile=self._mtls.ca_path)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Endpoints are addresses, rarely names in their certificates: the identity check replaces the
        # host name check; the chain is still verified against the CA.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.sslobject_class = self._sslobject_class
        return context

    # --------------------------------------------------------------------------------------- identities

    def expected(self, service: str | None) -> ExpectedIdentities:
        """The identities ``service``'s servers must present (None: the default)."""
        found = self._by_service.get(service)
        if found is not None:
            return found
        patterns = self._overrides.get(service) if service is not None else None
        if patterns is None:
            found = self.default
        else:
            found = self._interned.get(patterns)
            if found is None:
                found = self._interned[patterns] = ExpectedIdentities(patterns, trust_domain=self.default.trust_domain)
        if len(self._by_service) < _MAX_SERVICES:
            self._by_service[service] = found
        return found

    def enter(
        self, request: httpx.Request, proxy_host: str | None = None
    ) -> tuple[ssl.SSLContext, ExpectedIdentities, contextvars.Token[Any]]:
        """Before sending ``request`` to an ``https`` endpoint: the context to connect with, the identities
        its pool is kept for, and a token for :meth:`leave`. Handshakes made until then check the server
        against the request's service (``proxy_host``: the egress proxy's, checked against the default).
        Raises ``NoHealthyEndpoints`` when this endpoint already refused the call's identity check."""
        context = self.current()
        ctx = request.extensions.get(EXTENSION)
        service: str | None = ctx.service.name if ctx is not None else None
        expected = self.expected(service)
        refused = request.extensions.get(REFUSED_EXTENSION)
        if refused is not None:
            url = request.url
            if (url.host, url.port) in refused:
                raise NoHealthyEndpoints(
                    service or "?",
                    "its server's identity was refused earlier in this call and no other endpoint is left to try",
                    endpoint=_origin(url),
                    request=request,
                )
        token = _TARGET.set((service, expected, proxy_host))
        return context, expected, token

    @staticmethod
    def leave(token: contextvars.Token[Any]) -> None:
        _TARGET.reset(token)

    def mismatch(self, exc: BaseException, request: httpx.Request) -> ServerIdentityMismatch | None:
        """``exc`` as the mesh's ``ServerIdentityMismatch`` when an identity check caused it, else None. The
        endpoint is remembered on the request, so that the call does not try it again."""
        refused = _refusal(exc)
        if refused is None:
            return None
        url = request.url
        endpoint = _origin(url)
        error = ServerIdentityMismatch(
            service=refused.service,
            endpoint=endpoint,
            expected=str(refused.expected),
            spiffe_ids=refused.spiffe_ids,
            dns_names=refused.dns_names,
            subject=refused.subject,
            request=request,
        )
        if request.extensions.get(EXTENSION) is not None:
            request.extensions.setdefault(REFUSED_EXTENSION, set()).add((url.host, url.port))
        key = (refused.service, endpoint, error.presented)
        if key not in self._reported:
            if len(self._reported) >= _MAX_REPORTED:
                self._reported.clear()
            self._reported.add(key)
            logger.warning("mtls: %s", error)
        return error


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii')}"


def _describe(cert_path: str | None) -> str:
    """The client certificate's SPIFFE ID (else subject) and expiry, for the reload log line."""
    if cert_path is None:  # pragma: no cover - ClientTLS refuses a config without one
        return "the client certificate"
    try:
        from cryptography import x509

        with open(cert_path, "rb") as file:
            certificate = x509.load_pem_x509_certificate(file.read())
        try:
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(uri) for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)]
        except x509.ExtensionNotFound:
            names = []
        who = names[0] if names else certificate.subject.rfc4514_string()
        until = certificate.not_valid_after_utc.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"the client certificate {who} (valid until {until})"
    except Exception:  # the description is only for the log line: never fail a reload over it
        return f"the client certificate {cert_path}"
