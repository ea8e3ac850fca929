"""The TLS certificate (SIP over TLS, the web page): operator-provided or self-signed."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.store.atomic import atomic_write

TLS_DIR = "tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 3650


class CertificateError(Exception):
    """The TLS files are present but unusable."""


def ensure_certificate(
    data_dir: str | os.PathLike[str], hostname: str | None = None
) -> tuple[Path, Path]:
    """Return (cert_path, key_path) under data_dir/tls, creating a self-signed pair if absent.

    An existing pair is used as is. A key without a certificate (an interrupted first
    run, or an operator's key) is kept and gets a self-signed certificate.
    """
    folder = Path(data_dir) / TLS_DIR
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    if cert_path.exists():
        raise CertificateError(
            f"{cert_path} exists but {key_path} is missing: provide both or remove the certificate"
        )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (TypeError, ValueError) as e:  # TypeError: encrypted key
            raise CertificateError(f"{key_path}: cannot use this private key: {e}") from None
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(key_path, pem, mode=0o600)
    cert = self_signed_certificate(key, hostname or socket.gethostname() or "localhost")
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def self_signed_certificate(key, hostname: str, days: int = VALID_DAYS) -> x509.Certificate:
    """A self-signed server/client certificate: CN=hostname, SAN hostname, localhost, loopback."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys([hostname, "localhost"]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # tolerate a slow clock
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not isinstance(key, ec.EllipticCurvePrivateKey),  # RSA
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    edwards = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(key, None if edwards else hashes.SHA256())
