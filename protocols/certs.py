"""Self-signed application instance certificates for OPC UA (OPC UA Part 6, 6.2.2).

An OPC UA application certificate carries the application URI as a URI SubjectAltName, the host
names/addresses it serves, and key usages for signing and encryption. The simulator and the
head-end client each get one; each trusts the other's certificate by exact match (a trust list of
certificate files), so an unknown server certificate is refused.

Certificates are written DER (``cert.der``), keys PEM PKCS#8 (``key.pem``, mode 0600).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from graph_schema.errors import ConfigError

SIMULATOR_APP_URI = "urn:dms-headend:field-simulator"
HEADEND_APP_URI = "urn:dms-headend:headend"


@dataclass(frozen=True, slots=True)
class CertPair:
    cert_path: Path
    key_path: Path
    application_uri: str

    def cert_der(self) -> bytes:
        return load_cert_der(self.cert_path)


def generate_self_signed(
    directory: str | Path,
    application_uri: str,
    *,
    common_name: str | None = None,
    hostnames: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    days: int = 365,
    key_size: int = 2048,
) -> CertPair:
    """Write ``cert.der`` + ``key.pem`` into ``directory`` and return their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or application_uri)])
    host = socket.gethostname()
    dns = list(dict.fromkeys([*hostnames, host]))
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    san += [x509.DNSName(h) for h in dns]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = d / "cert.der"
    key_path = d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    os.chmod(key_path, 0o600)
    return CertPair(cert_path, key_path, application_uri)


def load_cert_der(path: str | Path) -> bytes:
    """A certificate file (DER or PEM) as DER bytes."""
    data = Path(path).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    return data


def fingerprint(cert_der: bytes) -> str:
    return hashlib.sha256(cert_der).hexdigest()


def trusted_fingerprints(paths: Iterable[str | Path]) -> frozenset[str]:
    """Fingerprints of certificate files; a directory contributes every ``*.der``/``*.pem`` in it."""
    out: set[str] = set()
    for p in paths:
        path = Path(p)
        files = (
            sorted(f for f in path.iterdir() if f.suffix.lower() in (".der", ".pem", ".crt"))
            if path.is_dir()
            else [path]
        )
        for f in files:
            out.add(fingerprint(load_cert_der(f)))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Pki:
    """The simulator's and the head-end's certificates; each trusts the other's."""

    simulator: CertPair
    headend: CertPair


def ensure_pki(data_dir: str | Path) -> Pki:
    """Create (once) ``<data_dir>/pki/{simulator,headend}/{cert.der,key.pem}``."""
    root = Path(data_dir) / "pki"

    def one(sub: str, uri: str) -> CertPair:
        d = root / sub
        if (d / "cert.der").exists() and (d / "key.pem").exists():
            return CertPair(d / "cert.der", d / "key.pem", uri)
        return generate_self_signed(d, uri)

    return Pki(one("simulator", SIMULATOR_APP_URI), one("headend", HEADEND_APP_URI))


CLIENT_CERT_NAMES = ("cert.der", "cert.pem")
CLIENT_KEY_NAME = "key.pem"
CERT_SUFFIXES = (".der", ".pem", ".crt")


class PkiConfigError(ConfigError):
    """An operator-supplied OPC UA certificate folder that cannot be used (the message says why)."""


def load_client_pki(directory: str | Path, *, setting: str = "DMS_OPCUA_PKI_DIR") -> tuple[CertPair, list[Path]]:
    """The head-end's own OPC UA certificate and the servers it trusts, from one flat folder (a
    Kubernetes Secret mounts as one): ``cert.der`` or ``cert.pem``, ``key.pem``, and every other
    ``*.der`` / ``*.pem`` / ``*.crt`` file is a trusted server (RTU) certificate.

    The application URI is read from the certificate's URI SubjectAltName, as OPC UA requires.
    Anything missing or unreadable raises :class:`PkiConfigError` naming the file and ``setting``.
    """
    d = Path(directory)
    if not d.is_dir():
        raise PkiConfigError(f"{setting}={d} is not a directory; point it at the folder holding cert.pem, "
                             "key.pem and the trusted server certificates")
    cert_path = next((d / n for n in CLIENT_CERT_NAMES if (d / n).is_file()), None)
    key_path = d / CLIENT_KEY_NAME
    missing = [n for n, ok in (("cert.der or cert.pem", cert_path is not None),
                               (CLIENT_KEY_NAME, key_path.is_file())) if not ok]
    if missing:
        raise PkiConfigError(f"{setting}={d} lacks {' and '.join(missing)} (the head-end's own OPC UA "
                             "application certificate and its private key)")
    assert cert_path is not None
    try:
        cert = x509.load_der_x509_certificate(load_cert_der(cert_path))
    except (ValueError, OSError) as exc:
        raise PkiConfigError(f"{cert_path} is not a readable X.509 certificate ({exc}); "
                             "give a DER or PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise PkiConfigError(f"{key_path} is not an unencrypted PEM private key; "
                             "export the key without a passphrase (PKCS#8 or traditional PEM)") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise PkiConfigError(f"{key_path} is not the private key of {cert_path}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise PkiConfigError(f"{cert_path} has no URI SubjectAltName; an OPC UA application certificate "
                             "must carry the application URI (e.g. urn:utility:dms-headend)")
    trusted = sorted(f for f in d.iterdir()
                     if f.is_file() and f.suffix.lower() in CERT_SUFFIXES and f != cert_path
                     and f.name != CLIENT_KEY_NAME)
    if not trusted:
        raise PkiConfigError(f"{setting}={d} holds no trusted server certificate; add each RTU/gateway "
                             "certificate (*.der, *.pem or *.crt) next to cert.pem")
    for f in trusted:
        try:
            x509.load_der_x509_certificate(load_cert_der(f))
        except (ValueError, OSError) as exc:
            raise PkiConfigError(f"trusted certificate {f} cannot be read ({exc}); remove it or replace it "
                                 "with a DER or PEM certificate") from None
    return CertPair(cert_path, key_path, uris[0]), trusted
