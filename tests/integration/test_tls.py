"""TLS and mutual TLS over the wire: the SDK and the CLI with a CA file and
a token, plaintext and untrusted clients refused, and client certificates
naming principals whose roles come from the configuration."""

from __future__ import annotations

import pytest

from sdk import BrokerClient, TlsOptions, cli
from sdk.errors import PermissionDeniedError, UnavailableError
from tests.integration.helpers import requirement, write_config

# Seconds a call that cannot get past the TLS handshake is given.
REFUSED_TIMEOUT = 2.0


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


def test_broker_serve_takes_tls_files_from_its_configuration_files_directory(
    tmp_path, pki, start_broker
):
    # The files are in tmp_path, the configuration in tmp_path/etc, and the
    # broker runs in tmp_path: only paths taken from etc/ find the files.
    document = {
        "server": {
            "tls": {
                "cert_file": f"../{pki.server.cert_file.name}",
                "key_file": f"../{pki.server.key_file.name}",
                "client_ca_file": f"../{pki.ca.cert_file.name}",
            }
        },
        "auth": {
            "enabled": True,
            "mtls": {"default_role": "viewer", "roles": {"ci-runner": "admin"}},
        },
        "kinds": ["resources.calculator.data.CalculatorData"],
    }
    (tmp_path / "etc").mkdir()
    config = write_config(tmp_path / "etc" / "rotest.yml", document)
    database = f"sqlite:///{tmp_path / 'serve.sqlite3'}"
    process = start_broker(
        "--config", str(config), "--database", database, "--address", "127.0.0.1:0"
    )
    address = process.wait_listening()
    assert "TLS is on" in process.stderr and "mutual TLS" in process.stderr

    with BrokerClient(address, tls=pki.options(pki.runner), session=False, token="") as admin:
        admin.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1"})
    with BrokerClient(address, tls=pki.options(pki.alice), session=False, token="") as viewer:
        assert [r.name for r in viewer.list_resources()] == ["calc"]
        with pytest.raises(PermissionDeniedError):
            viewer.delete_resource("calc")


def test_the_cli_shows_a_client_certificate_to_a_mtls_broker(mtls_broker, pki, capsys):
    server, _ = mtls_broker
    target = ["--target", server.address, "--timeout", str(REFUSED_TIMEOUT)]
    ca = ["--ca-file", str(pki.ca.cert_file)]
    alice = ["--cert", str(pki.alice.cert_file), "--key", str(pki.alice.key_file)]
    assert cli.main([*target, "--token", "", *ca, *alice, "kinds"]) == cli.EXIT_OK
    assert "Licence" in capsys.readouterr().out
    assert cli.main([*target, "--token", "", *ca, "kinds"]) == cli.EXIT_UNREACHABLE
    assert cli.main([*target, *ca, alice[0], alice[1], "kinds"]) == cli.EXIT_USAGE
    assert "key" in capsys.readouterr().err
