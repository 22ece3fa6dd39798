"""Test certificates made with the openssl CLI: a CA, and certificates it signs (optionally with an encrypted key)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.tools import require_binary

DAYS = "2"  # test certificates only need to outlive the test run


@dataclass(frozen=True)
class Issued:
    """PEM files of one certificate: ``cert``, its ``key`` (encrypted with ``key_password`` when set), and both in one file."""

    cert: Path
    key: Path
    key_password: str | None
    bundle: Path  # key then certificate, unencrypted: a Kafka broker's PEM keystore


def _openssl(*args: str) -> None:
    openssl = require_binary("openssl", "TLS tests generate their certificates with it; scripts/system-deps.sh installs it")
    result = subprocess.run([openssl, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed:\n{result.stderr}")


def make_ca(directory: Path, name: str) -> Issued:
    """A self-signed CA certificate and its unencrypted key."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", DAYS,
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )
    bundle = directory / f"{name}.bundle.pem"
    bundle.write_bytes(key.read_bytes() + cert.read_bytes())
    return Issued(cert, key, None, bundle)


def issue(ca: Issued, directory: Path, name: str, *, sans: str = "IP:127.0.0.1,DNS:localhost",
          key_password: str | None = None) -> Issued:
    """A certificate for ``sans`` signed by ``ca``, usable by a server and a client; PKCS#8 key, AES-encrypted if asked."""
    directory.mkdir(parents=True, exist_ok=True)
    plain_key, csr, cert = directory / f"{name}.plain.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(plain_key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(cert), "-days", DAYS, "-extfile", str(extensions),
    )
    key = plain_key
    if key_password is not None:
        key = directory / f"{name}.key"
        _openssl("pkey", "-in", str(plain_key), "-out", str(key), "-aes256", "-passout", f"pass:{key_password}")
    bundle = directory / f"{name}.bundle.pem"
    bundle.write_bytes(plain_key.read_bytes() + cert.read_bytes())
    return Issued(cert, key, key_password, bundle)
