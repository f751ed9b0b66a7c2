"""Certificates for the TLS tests: a CA, the collector's and an agent's certificates,
an expired one, and a second CA that signed none of them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: str
    other_ca: str
    server_cert: str
    server_key: str
    expired_cert: str
    expired_key: str
    client_cert: str
    client_key: str
    rogue_client_cert: str  # signed by the other CA
    rogue_client_key: str


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool,
          expired: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = ((now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired
                  else (now - dt.timedelta(days=1), now + dt.timedelta(days=30)))
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca[0].subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]),
                        critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.DNSName("natlens-collector.natlens.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(ca[1], hashes.SHA256()), key


def make_pki(d: Path) -> Pki:
    ca, other = _ca("natlens test CA"), _ca("someone else's CA")
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "ca", *ca)
    _write(d / "other-ca", *other)
    _write(d / "server", *_leaf("natlens-collector", ca, server=True))
    _write(d / "expired", *_leaf("natlens-collector", ca, server=True, expired=True))
    _write(d / "client", *_leaf("natlens-agent", ca, server=False))
    _write(d / "rogue", *_leaf("natlens-agent", other, server=False))

    def p(name: str) -> str:
        return str(d / name)

    return Pki(p("ca.crt"), p("other-ca.crt"), p("server.crt"), p("server.key"),
               p("expired.crt"), p("expired.key"), p("client.crt"), p("client.key"),
               p("rogue.crt"), p("rogue.key"))
