"""The operator's OPC UA certificate folder (DMS_OPCUA_PKI_DIR): used when complete, refused with the
file and the fix named when not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from graph_schema.errors import ConfigError
from protocols.certs import PkiConfigError, generate_self_signed, load_client_pki

URI = "urn:utility:dms-headend"


def _pem(der_path: Path, dest: Path) -> None:
    cert = x509.load_der_x509_certificate(der_path.read_bytes())
    dest.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    own = generate_self_signed(tmp_path / "gen-own", URI, key_size=1024)
    rtu = generate_self_signed(tmp_path / "gen-rtu", "urn:vendor:rtu-7", key_size=1024)
    d = tmp_path / "opcua"
    d.mkdir()
    _pem(own.cert_path, d / "cert.pem")
    shutil.copy(own.key_path, d / "key.pem")
    _pem(rtu.cert_path, d / "rtu-7.pem")
    shutil.copy(rtu.cert_path, d / "rtu-7-copy.der")
    return d


def test_a_complete_folder_gives_the_certificate_its_uri_and_the_trust_list(folder: Path) -> None:
    pair, trusted = load_client_pki(folder)
    assert pair.cert_path == folder / "cert.pem" and pair.key_path == folder / "key.pem"
    assert pair.application_uri == URI
    assert [t.name for t in trusted] == ["rtu-7-copy.der", "rtu-7.pem"]


def test_errors_are_config_errors_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DMS_OPCUA_PKI_DIR=.*is not a directory"):
        load_client_pki(tmp_path / "nope")


@pytest.mark.parametrize("remove, message", [
    ("cert.pem", r"lacks cert.der or cert.pem"),
    ("key.pem", r"lacks key.pem"),
])
def test_missing_own_certificate_or_key(folder: Path, remove: str, message: str) -> None:
    (folder / remove).unlink()
    with pytest.raises(PkiConfigError, match=message):
        load_client_pki(folder)


def test_no_trusted_server_certificate(folder: Path) -> None:
    for f in ("rtu-7.pem", "rtu-7-copy.der"):
        (folder / f).unlink()
    with pytest.raises(PkiConfigError, match="holds no trusted server certificate"):
        load_client_pki(folder)


def test_key_of_another_certificate(folder: Path, tmp_path: Path) -> None:
    other = generate_self_signed(tmp_path / "gen-other", URI, key_size=1024)
    shutil.copy(other.key_path, folder / "key.pem")
    with pytest.raises(PkiConfigError, match="is not the private key of"):
        load_client_pki(folder)


def test_garbage_files(folder: Path) -> None:
    (folder / "rtu-broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(PkiConfigError, match=r"rtu-broken\.pem cannot be read"):
        load_client_pki(folder)
    (folder / "rtu-broken.pem").unlink()
    (folder / "key.pem").write_text("hunter2")
    with pytest.raises(PkiConfigError, match="not an unencrypted PEM private key") as err:
        load_client_pki(folder)
    assert "hunter2" not in str(err.value)


def test_certificate_without_application_uri(folder: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-uri")])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    with pytest.raises(PkiConfigError, match="no URI SubjectAltName"):
        load_client_pki(folder)
