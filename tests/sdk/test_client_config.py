"""The client configuration: arguments over the environment over the file's
`client:` section over its Rotest `rotest:` section over the defaults, the
file found as Rotest finds it, and bad values named with where they came
from."""

from __future__ import annotations

import pytest

from broker.config import load_config
from sdk import BrokerClient, TlsOptions
from sdk.channel import configured_tls
from sdk.config import DEFAULT_TARGET, ClientConfig, ClientConfigError, load_client_config

NO_ENVIRONMENT: dict[str, str] = {}


def write(directory, text: str, name: str = "rotest.yml"):
    path = directory / name
    path.write_text(text)
    return path


def test_with_nothing_configured_the_defaults_hold(tmp_path):
    config = load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))
    assert config == ClientConfig()
    assert (config.target, config.wait, config.token) == (DEFAULT_TARGET, 60.0, "")


def test_an_existing_rotest_file_works_unchanged(tmp_path):
    write(
        tmp_path,
        "rotest:\n  host: lab-broker\n  port: 7000\n  resource_request_timeout: 30\n"
        "  workdir: ~/.rotest\n  django_settings: lab.settings\n",
    )
    config = load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))
    assert (config.target, config.wait) == ("lab-broker:7000", 30.0)


def test_the_file_is_found_in_a_parent_directory_under_rotests_names(tmp_path):
    nested = tmp_path / "tests" / "deep"
    nested.mkdir(parents=True)
    write(tmp_path, "client:\n  target: parent:1\n", name=".rotest.yaml")
    config = load_client_config(NO_ENVIRONMENT, cwd=str(nested))
    assert config.target == "parent:1"
    assert config.path == str(tmp_path / ".rotest.yaml")


def test_the_client_section_wins_over_the_rotest_section(tmp_path):
    write(
        tmp_path,
        "rotest:\n  host: old\n  resource_request_timeout: 5\nclient:\n  host: new\n  port: 9\n",
    )
    config = load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))
    assert (config.target, config.wait) == ("new:9", 5.0)


def test_the_environment_wins_over_the_file(tmp_path):
    write(tmp_path, "client:\n  target: file:1\n  resource_request_timeout: 5\n")
    environ = {"BROKER_TARGET": "env:2", "BROKER_WAIT": "7", "BROKER_TOKEN": "secret"}
    config = load_client_config(environ, cwd=str(tmp_path))
    assert (config.target, config.wait, config.token) == ("env:2", 7.0, "secret")


def test_brokers_variables_win_over_rotests(tmp_path):
    environ = {
        "ROTEST_HOST": "rotest-host",
        "ROTEST_SERVER_PORT": "8000",
        "ROTEST_RESOURCE_REQUEST_TIMEOUT": "3",
    }
    rotest_only = load_client_config(environ, cwd=str(tmp_path))
    assert (rotest_only.target, rotest_only.wait) == ("rotest-host:8000", 3.0)
    both = load_client_config(
        {**environ, "BROKER_TARGET": "broker:1", "BROKER_WAIT": "4"}, cwd=str(tmp_path)
    )
    assert (both.target, both.wait) == ("broker:1", 4.0)


def test_rotests_port_variable_keeps_the_files_host(tmp_path):
    write(tmp_path, "rotest:\n  host: lab\n  port: 1\n")
    config = load_client_config({"ROTEST_SERVER_PORT": "2"}, cwd=str(tmp_path))
    assert config.target == "lab:2"


def test_broker_client_config_names_the_file(tmp_path):
    write(tmp_path, "client:\n  target: named:3\n", name="lab.yml")
    write(tmp_path, "client:\n  target: found:4\n")
    environ = {"BROKER_CLIENT_CONFIG": str(tmp_path / "lab.yml")}
    assert load_client_config(environ, cwd=str(tmp_path)).target == "named:3"


def test_paths_are_relative_to_the_files_directory(tmp_path):
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "ca.pem").write_text("ca\n")
    write(tmp_path, "client:\n  token_file: token\n  ca_file: ca.pem\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = load_client_config(
        {"BROKER_CLIENT_CONFIG": str(tmp_path / "rotest.yml")}, cwd=str(elsewhere)
    )
    assert config.token == "from-file"
    assert configured_tls(config) == TlsOptions(ca_file=str(tmp_path / "ca.pem"))
    overridden = load_client_config(
        {"BROKER_CLIENT_CONFIG": str(tmp_path / "rotest.yml"), "BROKER_TOKEN": "env"},
        cwd=str(elsewhere),
    )
    assert overridden.token == "env"


def test_tls_comes_from_the_file_or_the_environment(tmp_path):
    (tmp_path / "ca.pem").write_text("ca\n")
    assert configured_tls(load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))) is None
    write(tmp_path, "client:\n  tls: true\n")
    assert configured_tls(load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))) == TlsOptions()
    environ = {"BROKER_CA_FILE": str(tmp_path / "ca.pem")}
    assert configured_tls(load_client_config(environ, cwd=str(tmp_path))) == TlsOptions(
        ca_file=str(tmp_path / "ca.pem")
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("client:\n  port: http\n", "client.port"),
        ("client:\n  port: 70000\n", "client.port"),
        ("rotest:\n  port: true\n", "rotest.port"),
        ("client:\n  resource_request_timeout: -1\n", "client.resource_request_timeout"),
        ("client:\n  resource_request_timeout: soon\n", "client.resource_request_timeout"),
        ("client:\n  targte: x:1\n", "client.targte: unknown key"),
        ("client:\n  target: x:1\n  host: y\n", "not both"),
        ("client:\n  target: ''\n", "client.target"),
        ("client:\n  tls: yes please\n", "client.tls"),
        ("client:\n  token_file: missing\n", "client.token_file: cannot read"),
        ("client: [1]\n", "client: must be a mapping"),
        ("client: {\n", "not valid YAML"),
    ],
)
def test_a_bad_value_is_named_with_its_file_and_key(tmp_path, text, named):
    write(tmp_path, text)
    with pytest.raises(ClientConfigError, match=named) as refused:
        load_client_config(NO_ENVIRONMENT, cwd=str(tmp_path))
    assert str(tmp_path / "rotest.yml") in str(refused.value)


def test_a_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ClientConfigError, match="ROTEST_SERVER_PORT"):
        load_client_config({"ROTEST_SERVER_PORT": "x"}, cwd=str(tmp_path))
    with pytest.raises(ClientConfigError, match="BROKER_WAIT"):
        load_client_config({"BROKER_WAIT": "-5"}, cwd=str(tmp_path))


def test_the_broker_reads_a_file_with_client_sections(tmp_path):
    path = write(tmp_path, "client:\n  target: x:1\nrotest:\n  host: y\nleases:\n  max_ttl: 60\n")
    assert load_config(str(path), NO_ENVIRONMENT).leases.max_ttl == 60.0


def test_broker_client_takes_what_it_is_not_given_from_the_configuration():
    config = ClientConfig(target="configured:1", token="t", wait=12.0, holder="ci job 7")
    with BrokerClient(config=config, session=False) as client:
        assert client.addresses == ("configured:1",)
        assert (client.wait, client.holder) == (12.0, "ci job 7")
    with BrokerClient("given:2", wait=0, holder="me", config=config, session=False) as client:
        assert client.addresses == ("given:2",)
        assert (client.wait, client.holder) == (0, "me")


def test_the_repositorys_own_file_configures_the_default_client(tmp_path):
    from pathlib import Path

    repository_file = Path(__file__).resolve().parents[2] / "rotest.yml"
    config = load_client_config({"BROKER_CLIENT_CONFIG": str(repository_file)}, cwd=str(tmp_path))
    assert (config.target, config.wait) == (DEFAULT_TARGET, 60.0)


def test_the_cli_calls_the_configured_broker(broker, tmp_path, monkeypatch, capsys):
    from sdk import cli

    write(tmp_path, f"client:\n  target: {broker.address}\n")
    monkeypatch.setenv("BROKER_CLIENT_CONFIG", str(tmp_path / "rotest.yml"))
    assert cli.main(["kinds"]) == 0
    assert "Calculator" in capsys.readouterr().out


def test_the_cli_names_a_bad_client_configuration(tmp_path, monkeypatch, capsys):
    from sdk import cli

    write(tmp_path, "client:\n  port: none\n")
    monkeypatch.setenv("BROKER_CLIENT_CONFIG", str(tmp_path / "rotest.yml"))
    assert cli.main(["kinds"]) == 2
    err = capsys.readouterr().err
    assert "client.port" in err
    assert "Traceback" not in err
