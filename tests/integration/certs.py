"""Certificates and keys made at test time: a CA, servers and clients it
signs, and signing keys with their JWKS for OIDC tokens."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import time
from pathlib import Path

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from sdk import TlsOptions

DAY = datetime.timedelta(days=1)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclasses.dataclass
class Issued:
    """A certificate and its key, as PEM files."""

    cert_file: Path
    key_file: Path

    @property
    def cert(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_file.read_bytes()


class CertificateAuthority:
    """A CA whose certificate is `cert_file`, issuing into `directory`."""

    def __init__(self, directory: Path, name: str = "Test CA"):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        slug = name.lower().replace(" ", "-")
        self.cert_file = directory / f"{slug}.pem"
        self.cert_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        """A certificate for `common_name`; a server's also names 127.0.0.1
        and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = Issued(
            self.directory / f"{common_name}.crt", self.directory / f"{common_name}.key"
        )
        issued.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key_file.write_bytes(_pem_key(key))
        return issued


class Pki:
    """The lab's CA with the broker's certificate and two clients' (`alice`,
    a user, and `ci-runner`, made an admin by the brokers' `auth.mtls`), and
    another CA with a client of its own (`mallory`)."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(directory, "Lab CA")
        self.other_ca = CertificateAuthority(directory, "Other CA")
        self.server = self.ca.issue("broker", server=True)
        self.alice = self.ca.issue("alice")
        self.runner = self.ca.issue("ci-runner")
        self.mallory = self.other_ca.issue("mallory")

    def options(self, who: Issued | None = None) -> TlsOptions:
        """The SDK's options trusting the lab's CA, showing `who`'s certificate."""
        if who is None:
            return TlsOptions(ca_file=str(self.ca.cert_file))
        return TlsOptions(str(self.ca.cert_file), str(who.cert_file), str(who.key_file))

    def credentials(self, who: Issued | None = None) -> grpc.ChannelCredentials:
        return self.options(who).credentials()


class SigningKey:
    """An issuer's signing key (RSA, RS256), its public JWK, and tokens."""

    def __init__(self, kid: str):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def token(self, claims: dict, *, kid: str | None = None, expires_in: float = 300) -> str:
        now = int(time.time())
        body = {"iat": now, "exp": now + int(expires_in), **claims}
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": kid or self.kid})


def jwks(*keys: SigningKey) -> dict:
    return {"keys": [key.jwk() for key in keys]}
