"""Self-signed TLS certificate for loopback tests (uses ``cryptography``)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


def make_self_signed(directory: Path, name: str = "server", cn: str = "localhost") -> tuple[Path, Path]:
    """Write NAME.crt and NAME.key (PEM, RSA 2048, valid for localhost,
    127.0.0.1 and ::1) into ``directory``; return their paths.  Also writes
    NAME.pem holding both (the form baresip's sip_certificate wants)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    crt_path = directory / f"{name}.crt"
    key_path = directory / f"{name}.key"
    crt_path.write_bytes(crt_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    (directory / f"{name}.pem").write_bytes(crt_pem + key_pem)
    return crt_path, key_path
