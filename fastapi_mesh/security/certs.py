"""Development certificates: a CA and, per service, a certificate with its SPIFFE ID.

    fastapi-mesh certs --out certs --trust-domain cluster.local api-gateway user-service

writes ``certs/ca.crt`` (and ``ca.key``) and, per service, ``certs/<service>/tls.crt``, ``tls.key`` and a copy of
``ca.crt``: the layout of a Kubernetes TLS secret (cert-manager writes the same three names), so one directory
is what one pod mounts. Each certificate carries the URI SAN ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``
and the DNS SANs of the service's Kubernetes names (``<service>``, ``<service>.<namespace>``,
``<service>.<namespace>.svc``, ``<service>.<namespace>.svc.<cluster-domain>``) plus ``localhost``, ``127.0.0.1``
and ``::1`` for local runs. It can both serve and call (server and client auth). Keys are ECDSA P-256.

These are for development and tests; in a cluster, certificates come from cert-manager or Istio (see
docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..settings import DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "service_dns_names",
    "spiffe_id",
    "write_dev_certificates",
]

#: Development CAs live a year, service certificates 90 days (cert-manager's default duration).
CA_LIFETIME = dt.timedelta(days=365)
CERT_LIFETIME = dt.timedelta(days=90)
#: Names added to every development certificate, so a service on this machine is reachable by them.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_SERVICE_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def spiffe_id(service: str, *, trust_domain: str = DEFAULT_TRUST_DOMAIN, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The SPIFFE ID Istio gives a workload running as service account ``service``.

    >>> spiffe_id("user-service")
    'spiffe://cluster.local/ns/default/sa/user-service'
    """
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service}"


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures, and certificate and CRL signing for a CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(temporary, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its key, PEM-encoded, as ``CertificateAuthority.issue`` returns them."""

    #: The certificate (PEM).
    cert_pem: bytes
    #: Its private key (PEM, PKCS#8, unencrypted).
    key_pem: bytes
    #: The SPIFFE ID in its URI SAN, or None.
    identity: str | None

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, directory: str | os.PathLike[str], *, ca: CertificateAuthority | None = None) -> Path:
        """Write ``tls.crt`` and ``tls.key`` (and ``ca.crt`` when ``ca`` is given) into ``directory``."""
        target = Path(directory)
        _write(target / "tls.crt", self.cert_pem)
        _write(target / "tls.key", self.key_pem, private=True)
        if ca is not None:
            _write(target / "ca.crt", ca.cert_pem)
        return target


class CertificateAuthority:
    """A CA that signs service certificates with SPIFFE IDs.

    >>> ca = CertificateAuthority.create()
    >>> cert = ca.issue("user-service")
    >>> cert.identity
    'spiffe://cluster.local/ns/default/sa/user-service'
    >>> cert.certificate.issuer == ca.certificate.subject
    True
    """

    def __init__(
        self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> None:
        self.certificate = certificate
        self.key = key
        self.trust_domain = trust_domain

    @classmethod
    def create(
        cls,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        common_name: str | None = None,
        lifetime: dt.timedelta = CA_LIFETIME,
    ) -> CertificateAuthority:
        """A new self-signed CA (ECDSA P-256) for ``trust_domain``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"fastapi-mesh development CA ({trust_domain})"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key, trust_domain)

    @classmethod
    def load(cls, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> CertificateAuthority:
        """A CA from its PEM files (``ca.crt``, ``ca.key``); the trust domain is read from its organisation."""
        certificate = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an ECDSA key")
        organisation = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        trust_domain = str(organisation[0].value) if organisation else DEFAULT_TRUST_DOMAIN
        return cls(certificate, key, trust_domain)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.certificate)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``ca.crt`` and ``ca.key`` into ``directory``."""
        target = Path(directory)
        _write(target / "ca.crt", self.cert_pem)
        _write(target / "ca.key", self.key_pem, private=True)
        return target

    def issue(
        self,
        service: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        identity: str | None = "",
        dns_names: Sequence[str] | None = None,
        cluster_domain: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        lifetime: dt.timedelta = CERT_LIFETIME,
    ) -> IssuedCertificate:
        """A certificate for ``service``, usable to serve and to call.

        ``identity``: the URI SAN; by default ``spiffe://<trust-domain>/ns/<namespace>/sa/<service>``; ``None``
        for no URI SAN. ``dns_names``: the DNS and IP SANs; by default the service's Kubernetes names in
        ``cluster_domain`` (the trust domain unless given) and ``localhost``, ``127.0.0.1``, ``::1``.
        ``not_before``/``not_after`` set the validity (an expired certificate for tests), else now to
        now + ``lifetime``.
        """
        if identity == "":
            identity = spiffe_id(service, trust_domain=self.trust_domain, namespace=namespace)
        if dns_names is None:
            dns_names = [*service_dns_names(service, namespace, cluster_domain or self.trust_domain), *LOCAL_NAMES]
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start = not_before if not_before is not None else now - dt.timedelta(minutes=5)
        end = not_after if not_after is not None else now + lifetime
        names: list[x509.GeneralName] = []
        if identity is not None:
            names.append(x509.UniformResourceIdentifier(identity))
        names.extend(_general_names(dns_names))
        public = key.public_key()
        ca_key_id = x509.SubjectKeyIdentifier.from_public_key(self.key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
                        x509.NameAttribute(NameOID.COMMON_NAME, service),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return IssuedCertificate(_pem(certificate), _key_pem(key), identity)


def service_dns_names(
    service: str, namespace: str = DEFAULT_NAMESPACE, cluster_domain: str = DEFAULT_TRUST_DOMAIN
) -> list[str]:
    """The names a Kubernetes Service is reachable by inside the cluster.

    >>> service_dns_names("user-service")[-1]
    'user-service.default.svc.cluster.local'
    """
    svc = f"{service}.{namespace}.svc"
    return [service, f"{service}.{namespace}", svc, f"{svc}.{cluster_domain}"]


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def write_dev_certificates(
    out: str | os.PathLike[str],
    services: Sequence[str],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    namespace: str = DEFAULT_NAMESPACE,
    dns_names: Sequence[str] = (),
) -> dict[str, str]:
    """Create (or reuse) the CA in ``out`` and a certificate per service under ``out/<service>/``.

    A CA already in ``out`` (``ca.crt`` and ``ca.key``) is reused, so services added later trust the same CA.
    ``dns_names`` are added to every certificate. Returns ``{service: its SPIFFE ID}``.
    """
    for service in services:
        if not _SERVICE_RE.match(service):
            raise ValueError(f"{service!r} is not a service name (lowercase letters, digits, '-' and '.')")
    target = Path(out)
    ca_cert, ca_key = target / "ca.crt", target / "ca.key"
    if ca_cert.exists() and ca_key.exists():
        ca = CertificateAuthority.load(ca_cert, ca_key)
        if ca.trust_domain != trust_domain:
            raise ValueError(
                f"{ca_cert} is the CA of trust domain {ca.trust_domain!r}, not {trust_domain!r}: use another --out"
            )
    else:
        ca = CertificateAuthority.create(trust_domain=trust_domain)
        ca.write(target)
    issued: dict[str, str] = {}
    for service in services:
        names = [*service_dns_names(service, namespace, trust_domain), *LOCAL_NAMES, *dns_names]
        cert = ca.issue(service, namespace=namespace, dns_names=names)
        cert.write(target / service, ca=ca)
        assert cert.identity is not None
        issued[service] = cert.identity
    return issued
