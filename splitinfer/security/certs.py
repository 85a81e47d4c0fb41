"""``make certs``: a development certificate authority and the certificates a cluster needs.

    python -m splitinfer.security.certs --out certs [--host edge-1 --host 10.0.0.5]

Writes ``ca.pem`` (and ``ca.key``), ``server.pem``/``server.key`` (every daemon's serving certificate; its
names are localhost, 127.0.0.1 and each --host), ``cluster.pem``/``cluster.key`` (the client certificate
cluster components present to each other: common name ``splitinfer-cluster``) and
``admin.pem``/``admin.key`` (an operator's client certificate: common name ``splitinfer-admin``), and
bearer tokens: ``device.token``, ``cluster.token`` and ``admin.token`` (one role each), whose digests are in
``tokens.json`` (the file daemons read). Components send the cluster token as well as their certificate, so
that they are recognised by servers that do not ask for client certificates (the device-facing front-end).
Keys and tokens are readable by the owner only; keys are ECDSA P-256. For development and tests: production
clusters bring their own PKI and point the same flags at it.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitinfer.security.auth import ADMIN, CLUSTER, DEVICE, TokenTable

__all__ = ["ADMIN_NAME", "CLUSTER_NAME", "make_certs"]

CLUSTER_NAME = "splitinfer-cluster"
ADMIN_NAME = "splitinfer-admin"
_VALID = datetime.timedelta(days=365)


def _name(common_name: str) -> x509.Name:
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "splitinfer")
    return x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    data = key.private_bytes(pem, pkcs8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hosts: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_certs(out: Path, hosts: list[str] | None = None) -> None:
    """Writes the CA and the server, cluster and admin certificates into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("splitinfer development CA")
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", ca_key)
    names = ["localhost", "127.0.0.1", *(hosts or [])]
    issued = {
        "server": _issue(ca_key, ca_name, "splitinfer-server", ExtendedKeyUsageOID.SERVER_AUTH, names),
        "cluster": _issue(ca_key, ca_name, CLUSTER_NAME, ExtendedKeyUsageOID.CLIENT_AUTH),
        "admin": _issue(ca_key, ca_name, ADMIN_NAME, ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for stem, (cert, key) in issued.items():
        (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(out / f"{stem}.key", key)
    tokens = TokenTable()
    for name, role in (("device", DEVICE), ("cluster", CLUSTER), ("admin", ADMIN)):
        token = tokens.add(f"dev-{name}", [role])
        fd = os.open(out / f"{name}.token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    tokens.write(out / "tokens.json")


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m splitinfer.security.certs", description=__doc__.split("\n\n")[0])
    cli.add_argument("--out", type=Path, default=Path("certs"))
    cli.add_argument("--host", action="append", default=[], help="another name or IP for the server certificate")
    args = cli.parse_args(argv)
    make_certs(args.out, args.host)
    print(f"wrote a development CA and server, cluster and admin certificates to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
