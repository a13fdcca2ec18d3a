"""TLS and mutual TLS over the wire: the SDK and the CLI with a CA file and
a token, plaintext and untrusted clients refused, and client certificates
naming principals whose roles come from the configuration."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from broker import cli
from broker.api.server import build_server
from broker.config import AuthConfig, MtlsConfig, ServerConfig, TlsConfig
from sdk import BrokerClient, TlsOptions
from sdk.errors import PermissionDeniedError, UnavailableError
from tests.conftest import make_config, wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS, make_tokens
from tests.integration.certs import CertificateAuthority
from tests.integration.helpers import requirement

# Seconds a call that cannot get past the TLS handshake is given.
REFUSED_TIMEOUT = 2.0


@dataclasses.dataclass
class Pki:
    ca: CertificateAuthority
    other_ca: CertificateAuthority

    def __post_init__(self):
        self.server = self.ca.issue("broker", server=True)
        self.alice = self.ca.issue("alice")
        self.runner = self.ca.issue("ci-runner")
        self.mallory = self.other_ca.issue("mallory")

    def options(self, who=None) -> TlsOptions:
        if who is None:
            return TlsOptions(ca_file=str(self.ca.cert_file))
        return TlsOptions(str(self.ca.cert_file), str(who.cert_file), str(who.key_file))

    def credentials(self, who=None) -> grpc.ChannelCredentials:
        return self.options(who).credentials()


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(CertificateAuthority(tmp_path, "Lab CA"), CertificateAuthority(tmp_path, "Other CA"))


def start(tmp_path, pki: Pki, *, mutual: bool, who=None):
    tls = TlsConfig(
        str(pki.server.cert_file),
        str(pki.server.key_file),
        str(pki.ca.cert_file) if mutual else "",
    )
    mtls = MtlsConfig(roles={"ci-runner": "admin"}, groups={"ci-runner": ("ci",)})
    config = dataclasses.replace(
        make_config(tmp_path),
        server=ServerConfig(tls=tls),
        auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS, mtls=mtls),
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address, credentials=pki.credentials(who))
    return server


@pytest.fixture
def tls_broker(tmp_path, pki):
    server = start(tmp_path, pki, mutual=False)
    yield server, make_tokens()
    server.stop(0)


@pytest.fixture
def mtls_broker(tmp_path, pki):
    server = start(tmp_path, pki, mutual=True, who=pki.alice)
    yield server, make_tokens()
    server.stop(0)


def held_by(client: BrokerClient) -> str:
    """The principal a lease the client acquires is recorded for."""
    lease, secret = client.acquire([requirement("Licence")])
    client.release(lease.lease_id, secret)
    return lease.principal


def add_licence(address: str, token: str, tls: TlsOptions) -> None:
    with BrokerClient(address, token=token, tls=tls, session=False) as admin:
        admin.create_resource("Licence", "licence", {"product": "compiler"})


def test_the_sdk_calls_a_tls_broker_with_a_ca_file_and_a_token(tls_broker, pki, monkeypatch):
    server, tokens = tls_broker
    add_licence(server.address, tokens["admin"], pki.options())
    with BrokerClient(server.address, token=tokens["alice"], tls=pki.options()) as client:
        assert held_by(client) == "alice"

    monkeypatch.setenv("BROKER_CA_FILE", str(pki.ca.cert_file))
    monkeypatch.setenv("BROKER_TOKEN", tokens["viewer"])
    with BrokerClient(server.address, session=False) as from_environment:
        assert from_environment.list_kinds()


def test_a_plaintext_client_cannot_call_a_tls_broker(tls_broker):
    server, tokens = tls_broker
    plain = BrokerClient(
        server.address, token=tokens["viewer"], tls=False, session=False, timeout=REFUSED_TIMEOUT
    )
    with plain, pytest.raises(UnavailableError):
        plain.list_kinds()


def test_a_client_that_trusts_another_ca_refuses_the_broker(tls_broker, pki):
    server, tokens = tls_broker
    other = TlsOptions(ca_file=str(pki.other_ca.cert_file))
    client = BrokerClient(
        server.address, token=tokens["viewer"], tls=other, session=False, timeout=REFUSED_TIMEOUT
    )
    with client, pytest.raises(UnavailableError):
        client.list_kinds()


def test_the_cli_calls_a_tls_broker_with_ca_file_and_token(tls_broker, pki, capsys, monkeypatch):
    server, tokens = tls_broker
    for variable in ("BROKER_TOKEN", "BROKER_CA_FILE", "BROKER_CERT_FILE", "BROKER_KEY_FILE"):
        monkeypatch.delenv(variable, raising=False)
    target = ["--target", server.address, "--timeout", str(REFUSED_TIMEOUT)]
    token = ["--token", tokens["viewer"]]
    assert cli.main([*target, *token, "--ca-file", str(pki.ca.cert_file), "kinds"]) == cli.EXIT_OK
    assert "Licence" in capsys.readouterr().out
    assert cli.main([*target, *token, "kinds"]) == cli.EXIT_UNREACHABLE
    monkeypatch.setenv("BROKER_CA_FILE", str(pki.ca.cert_file))
    assert cli.main([*target, *token, "kinds"]) == cli.EXIT_OK


def test_a_client_certificate_names_the_principal_and_config_its_role(mtls_broker, pki):
    server, _ = mtls_broker
    add_licence(server.address, "", pki.options(pki.runner))  # ci-runner is an admin
    with BrokerClient(server.address, token="", tls=pki.options(pki.alice)) as alice:
        assert held_by(alice) == "alice"
        with pytest.raises(PermissionDeniedError) as raised:
            alice.create_resource("Licence", "another", {"product": "compiler"})
        assert "alice has the role user" in str(raised.value)


def test_a_bearer_token_wins_over_the_client_certificate(mtls_broker, pki):
    server, tokens = mtls_broker
    add_licence(server.address, tokens["admin"], pki.options(pki.alice))
    with BrokerClient(server.address, token=tokens["bob"], tls=pki.options(pki.alice)) as client:
        assert held_by(client) == "bob"


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(mtls_broker, pki, who):
    server, tokens = mtls_broker
    tls = pki.options() if who == "no certificate" else pki.options(pki.mallory)
    client = BrokerClient(
        server.address, token=tokens["admin"], tls=tls, session=False, timeout=REFUSED_TIMEOUT
    )
    with client, pytest.raises(UnavailableError):
        client.list_kinds()
