"""The configuration: defaults, the repository's `rotest.yml`, every kind of
bad value named by its key, and the environment overrides."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import yaml

from broker.config import Config, ConfigError, load_config, parse_config, with_database_url
from resources.calculator.data import CalculatorData
from tests.integration.certs import Pki
from tests.kinds import PhoneData

REPOSITORY = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, document) -> str:
    path = tmp_path / "rotest.yml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return str(path)


def refused_key(raw) -> str:
    """Parses `raw`, expecting a ConfigError; returns its key after checking
    that the message starts with it."""
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert str(error.value).startswith(f"{error.value.key}: ")
    return error.value.key


def test_defaults_without_a_file(tmp_path):
    config = load_config(None, environ={})
    assert config.server.address == "127.0.0.1:50051"
    assert (config.server.max_concurrent_rpcs, config.server.grace_seconds) == (4096, 5.0)
    assert config.database.url == "sqlite:///broker.sqlite3"
    assert config.database.stall_timeout == 5.0
    assert (config.leases.default_ttl, config.leases.max_ttl) == (60.0, 3600.0)
    assert config.leases.expiry_interval == 1.0
    assert config.kinds == ("resources.calculator.data.CalculatorData",)
    assert config.kind_models() == (CalculatorData,)
    assert config.base_dir == os.getcwd()


def test_an_empty_document_means_the_defaults():
    assert parse_config(None, "/somewhere") == Config(base_dir="/somewhere")
    assert parse_config({}) == Config()
    assert parse_config({"server": None, "leases": None}) == Config()


def test_the_repository_configuration_loads_with_the_documented_defaults():
    path = REPOSITORY / "rotest.yml"
    config = load_config(str(path), environ={})
    assert config == Config(base_dir=str(REPOSITORY))


def test_given_values_are_kept(tmp_path):
    path = write_config(
        tmp_path,
        {
            "server": {"address": "192.0.2.10:7000", "max_concurrent_rpcs": 4, "grace_seconds": 0},
            "database": {"url": "sqlite:///lab.db", "stall_timeout": 2},
            "leases": {"default_ttl": 10, "max_ttl": 10.0, "expiry_interval": 0.25},
            "kinds": ["tests.kinds.PhoneData", "resources.calculator.data.CalculatorData"],
        },
    )
    config = load_config(path, environ={})
    assert (config.server.address, config.server.max_concurrent_rpcs) == ("192.0.2.10:7000", 4)
    assert config.server.grace_seconds == 0.0
    assert config.database.url == "sqlite:///lab.db"
    assert config.database.stall_timeout == 2.0
    assert isinstance(config.database.stall_timeout, float)
    assert config.leases.default_ttl == 10.0
    assert isinstance(config.leases.default_ttl, float)
    assert config.leases.expiry_interval == 0.25
    assert config.kind_models() == (PhoneData, CalculatorData)
    assert config.base_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"servr": {}}, "servr"),
        ({"server": {"adress": "h:1"}}, "server.adress"),
        ({"database": {"path": "x"}}, "database.path"),
        ({"leases": {"ttl": 5}}, "leases.ttl"),
    ],
)
def test_unknown_keys_are_refused(raw, key):
    assert refused_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (["server"], "(top level)"),
        ({"server": 5}, "server"),
        ({"leases": ["default_ttl"]}, "leases"),
        ({"server": {"max_concurrent_rpcs": "16"}}, "server.max_concurrent_rpcs"),
        ({"server": {"max_concurrent_rpcs": 16.0}}, "server.max_concurrent_rpcs"),
        ({"server": {"max_concurrent_rpcs": True}}, "server.max_concurrent_rpcs"),
        ({"server": {"address": 50051}}, "server.address"),
        ({"server": {"grace_seconds": "5s"}}, "server.grace_seconds"),
        ({"database": {"url": None}}, "database.url"),
        ({"database": {"stall_timeout": "5s"}}, "database.stall_timeout"),
        ({"database": {"stall_timeout": True}}, "database.stall_timeout"),
        ({"database": {"stall_timeout": None}}, "database.stall_timeout"),
        ({"leases": {"max_ttl": "1h"}}, "leases.max_ttl"),
        ({"leases": {"default_ttl": True}}, "leases.default_ttl"),
        ({"kinds": "resources.calculator.data.CalculatorData"}, "kinds"),
        ({"kinds": [1, 2]}, "kinds"),
    ],
)
def test_wrong_types_are_refused(raw, key):
    assert refused_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"max_concurrent_rpcs": 0}}, "server.max_concurrent_rpcs"),
        ({"server": {"max_concurrent_rpcs": -1}}, "server.max_concurrent_rpcs"),
        ({"server": {"grace_seconds": -0.5}}, "server.grace_seconds"),
        ({"server": {"address": "localhost"}}, "server.address"),
        ({"leases": {"default_ttl": 0}}, "leases.default_ttl"),
        ({"leases": {"max_ttl": -1}}, "leases.max_ttl"),
        ({"leases": {"expiry_interval": 0.0}}, "leases.expiry_interval"),
        ({"leases": {"default_ttl": 120, "max_ttl": 60}}, "leases.default_ttl"),
        ({"leases": {"default_ttl": 7200}}, "leases.default_ttl"),
        ({"database": {"stall_timeout": 0}}, "database.stall_timeout"),
        ({"database": {"stall_timeout": -5.0}}, "database.stall_timeout"),
        # TCP keep-alives count whole seconds; PostgreSQL's timeouts are int32 ms.
        ({"database": {"stall_timeout": 0.5}}, "database.stall_timeout"),
        ({"database": {"stall_timeout": 3600.5}}, "database.stall_timeout"),
        ({"database": {"stall_timeout": math.inf}}, "database.stall_timeout"),
    ],
)
def test_out_of_range_values_are_refused(raw, key):
    assert refused_key(raw) == key


@pytest.mark.parametrize(
    "key",
    [
        "leases.default_ttl",
        "leases.max_ttl",
        "leases.expiry_interval",
        "server.grace_seconds",
        "database.stall_timeout",
    ],
)
def test_nan_is_out_of_range(key):
    section, name = key.split(".")
    assert refused_key({section: {name: math.nan}}) == key


@pytest.mark.parametrize(
    ("kinds", "key"),
    [
        (["CalculatorData"], "kinds[0]"),
        (["no_such_module.ThingData"], "kinds[0]"),
        (["resources.calculator.data.NoSuchData"], "kinds[0]"),
        (["tests.kinds.PhoneData", "broker.config.Config"], "kinds[1]"),
    ],
)
def test_bad_kind_paths_are_refused(tmp_path, kinds, key):
    path = write_config(tmp_path, {"kinds": kinds})
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


def test_unreadable_or_invalid_files_are_refused(tmp_path):
    missing = str(tmp_path / "missing.yml")
    with pytest.raises(ConfigError) as error:
        load_config(missing, environ={})
    assert str(error.value).startswith(missing)
    broken = write_config(tmp_path, "server: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load_config(broken, environ={})
    assert str(error.value).startswith(broken)


def test_a_bad_key_in_a_file_names_the_key(tmp_path):
    path = write_config(tmp_path, "leases:\n  max_ttl: -5\n")
    with pytest.raises(ConfigError, match=r"^leases\.max_ttl: "):
        load_config(path, environ={})


def test_environment_overrides_address_and_database(tmp_path):
    path = write_config(tmp_path, {"server": {"address": "127.0.0.1:1"}})
    environ = {
        "BROKER_ADDRESS": "192.0.2.10:9999",
        "BROKER_DATABASE_URL": "sqlite:////var/lib/broker.db",
        "UNRELATED": "x",
    }
    config = load_config(path, environ=environ)
    assert config.server.address == "192.0.2.10:9999"
    assert config.database.url == "sqlite:////var/lib/broker.db"
    assert config.leases == Config().leases


def test_an_overriding_address_is_checked_like_the_file():
    with pytest.raises(ConfigError) as error:
        load_config(None, environ={"BROKER_ADDRESS": "localhost"})
    assert error.value.key == "server.address"


def test_empty_environment_values_do_not_override(tmp_path):
    path = write_config(tmp_path, {"database": {"url": "sqlite:///mine.db"}})
    config = load_config(path, environ={"BROKER_ADDRESS": "", "BROKER_DATABASE_URL": ""})
    assert config.server.address == "127.0.0.1:50051"
    assert config.database.url == "sqlite:///mine.db"


def test_the_stall_bound_edges_are_accepted():
    assert parse_config({"database": {"stall_timeout": 1}}).database.stall_timeout == 1.0
    assert parse_config({"database": {"stall_timeout": 3600}}).database.stall_timeout == 3600.0


def test_another_database_url_keeps_the_other_database_settings(tmp_path):
    path = write_config(tmp_path, {"database": {"url": "sqlite:///a.db", "stall_timeout": 2.5}})
    config = with_database_url(load_config(path, environ={}), "postgresql://u@192.0.2.1/lab")
    assert config.database.url == "postgresql://u@192.0.2.1/lab"
    assert config.database.stall_timeout == 2.5


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().server.max_concurrent_rpcs = 3  # type: ignore[misc]


# ------------------------------------------------------------ TLS, OIDC, mTLS


@pytest.fixture
def pem_files(tmp_path) -> Path:
    """A directory of a certificate, its key, a CA, another key, a file
    that holds no PEM, and a (placeholder) JWKS, beside the configuration."""
    pki = Pki(tmp_path / "pki")
    for name, source in {
        "cert.pem": pki.server.cert_file,
        "key.pem": pki.server.key_file,
        "ca.pem": pki.ca.cert_file,
        "alien.pem": pki.alice.key_file,
    }.items():
        (tmp_path / name).write_bytes(source.read_bytes())
    (tmp_path / "junk.pem").write_text("not PEM\n")
    (tmp_path / "jwks.json").write_text("{}\n")
    return tmp_path


def test_tls_and_oidc_paths_are_taken_from_the_configuration_files_directory(pem_files):
    path = write_config(
        pem_files,
        {
            "server": {
                "tls": {"cert_file": "cert.pem", "key_file": "key.pem", "client_ca_file": "ca.pem"}
            },
            "auth": {
                "enabled": True,
                "oidc": {
                    "issuer": "https://ci.example",
                    "audience": "lab",
                    "jwks_file": "jwks.json",
                },
                "mtls": {
                    "default_role": "viewer",
                    "roles": {"ci": "admin"},
                    "groups": {"ci": ["a"]},
                },
            },
        },
    )
    config = load_config(path, environ={})
    tls = config.server.tls
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == tuple(
        str(pem_files / name) for name in ("cert.pem", "key.pem", "ca.pem")
    )
    assert tls.enabled and tls.mutual
    oidc = config.auth.oidc
    assert oidc.jwks_file == str(pem_files / "jwks.json")
    assert (oidc.principal_claim, oidc.groups_claim, oidc.role_claim) == ("sub", "groups", "role")
    assert (oidc.default_role, oidc.leeway) == ("user", 0.0)
    mtls = config.auth.mtls
    assert (mtls.default_role, mtls.roles, mtls.groups) == (
        "viewer",
        {"ci": "admin"},
        {"ci": ("a",)},
    )


def test_tls_is_off_and_oidc_absent_by_default():
    config = parse_config({})
    assert not config.server.tls.enabled and config.auth.oidc is None


OIDC = {"issuer": "https://ci.example", "audience": "lab", "jwks_url": "https://ci.example/jwks"}


@pytest.mark.parametrize(
    ("server", "auth", "key"),
    [
        ({"tls": {"cert_file": "cert.pem"}}, {}, "server.tls.key_file"),
        ({"tls": {"key_file": "key.pem"}}, {}, "server.tls.cert_file"),
        ({"tls": {"client_ca_file": "ca.pem"}}, {"enabled": True}, "server.tls.client_ca_file"),
        ({"tls": {"cert_file": "nope.pem", "key_file": "key.pem"}}, {}, "server.tls.cert_file"),
        ({"tls": {"cert_file": "cert.pem", "key_file": "."}}, {}, "server.tls.key_file"),
        ({"tls": {"cert_file": 1}}, {}, "server.tls.cert_file"),
        ({"tls": {"cert_file": "junk.pem", "key_file": "key.pem"}}, {}, "server.tls.cert_file"),
        ({"tls": {"cert_file": "cert.pem", "key_file": "junk.pem"}}, {}, "server.tls.key_file"),
        ({"tls": {"cert_file": "cert.pem", "key_file": "ca.pem"}}, {}, "server.tls.key_file"),
        ({"tls": {"cert_file": "cert.pem", "key_file": "alien.pem"}}, {}, "server.tls.key_file"),
        (
            {"tls": {"cert_file": "cert.pem", "key_file": "key.pem", "client_ca_file": "junk.pem"}},
            {"enabled": True},
            "server.tls.client_ca_file",
        ),
        ({"tls": {"certificate": "cert.pem"}}, {}, "server.tls.certificate"),
        ({"tls": "cert.pem"}, {}, "server.tls"),
        (
            {"tls": {"cert_file": "cert.pem", "key_file": "key.pem", "client_ca_file": "ca.pem"}},
            {},
            "server.tls.client_ca_file",
        ),
        ({}, {"oidc": OIDC}, "auth.oidc"),
        ({}, {"enabled": True, "oidc": {**OIDC, "issuer": ""}}, "auth.oidc.issuer"),
        ({}, {"enabled": True, "oidc": {**OIDC, "audience": ""}}, "auth.oidc.audience"),
        ({}, {"enabled": True, "oidc": {**OIDC, "jwks_file": "jwks.json"}}, "auth.oidc.jwks_file"),
        ({}, {"enabled": True, "oidc": {**OIDC, "jwks_url": ""}}, "auth.oidc.jwks_file"),
        ({}, {"enabled": True, "oidc": {**OIDC, "jwks_url": "file:///x"}}, "auth.oidc.jwks_url"),
        ({}, {"enabled": True, "oidc": {**OIDC, "default_role": "root"}}, "auth.oidc.default_role"),
        ({}, {"enabled": True, "oidc": {**OIDC, "roles": {"ci": "root"}}}, "auth.oidc.roles.ci"),
        ({}, {"enabled": True, "oidc": {**OIDC, "roles": ["ci"]}}, "auth.oidc.roles"),
        ({}, {"enabled": True, "oidc": {**OIDC, "leeway": -1}}, "auth.oidc.leeway"),
        ({}, {"enabled": True, "oidc": {**OIDC, "client_id": "x"}}, "auth.oidc.client_id"),
        ({}, {"mtls": {"default_role": "owner"}}, "auth.mtls.default_role"),
        ({}, {"mtls": {"roles": {"alice": "owner"}}}, "auth.mtls.roles.alice"),
        ({}, {"mtls": {"groups": {"alice": "lab"}}}, "auth.mtls.groups.alice"),
        ({}, {"mtls": {"groups": ["lab"]}}, "auth.mtls.groups"),
    ],
)
def test_bad_tls_oidc_and_mtls_settings_name_their_key(pem_files, server, auth, key):
    with pytest.raises(ConfigError) as error:
        parse_config({"server": server, "auth": auth}, str(pem_files))
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: ")


def test_lifetime_and_quota_settings_are_kept():
    config = parse_config(
        {
            "leases": {"max_lifetime": 7200},
            "quotas": {"max_resources": 10, "principals": {"alice": 20, "ci": 0}},
        }
    )
    assert config.leases.max_lifetime == 7200.0
    assert (config.quotas.max_resources, config.quotas.principals) == (10, {"alice": 20, "ci": 0})
    assert parse_config({}).leases.max_lifetime == 0.0
    assert (parse_config({}).quotas.max_resources, parse_config({}).quotas.principals) == (0, {})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"leases": {"max_lifetime": -1}}, "leases.max_lifetime"),
        ({"quotas": {"max_resources": -1}}, "quotas.max_resources"),
        ({"quotas": {"max_resources": 1.5}}, "quotas.max_resources"),
        ({"quotas": {"principals": ["alice"]}}, "quotas.principals"),
        ({"quotas": {"principals": {"alice": "10"}}}, "quotas.principals.alice"),
        ({"quotas": {"principals": {"alice": -2}}}, "quotas.principals.alice"),
        ({"quotas": {"principals": {"alice": True}}}, "quotas.principals.alice"),
        ({"quotas": {"limit": 3}}, "quotas.limit"),
    ],
)
def test_bad_lifetime_and_quota_settings_are_refused(raw, key):
    assert refused_key(raw) == key


LAB_KIND = '''
import peewee

from broker.kind_data import ResourceData


class BenchPhoneData(ResourceData):
    """A phone of the lab beside the configuration."""

    os = peewee.CharField(max_length=32)
'''


@pytest.fixture
def isolated_imports(monkeypatch):
    """The import path and the modules imported, restored after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield sys
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_kinds_beside_the_configuration_import_from_any_directory(
    tmp_path, monkeypatch, isolated_imports
):
    lab = tmp_path / "lab"
    (lab / "benchlab").mkdir(parents=True)
    (lab / "benchlab" / "__init__.py").write_text("")
    (lab / "benchlab" / "phone.py").write_text(LAB_KIND)
    path = write_config(lab, {"kinds": ["benchlab.phone.BenchPhoneData"]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(path, environ={})

    (model,) = config.kind_models()
    assert model.__name__ == "BenchPhoneData"
    assert model.__module__ == "benchlab.phone"
    assert isolated_imports.modules["benchlab"].__file__ == str(lab / "benchlab" / "__init__.py")
    assert str(lab) not in isolated_imports.path


def test_a_kind_found_nowhere_names_where_it_was_looked_for(tmp_path, isolated_imports):
    path = write_config(tmp_path, {"kinds": ["nolab.phone.PhoneData"]})

    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})

    assert error.value.key == "kinds[0]"
    assert "cannot import module 'nolab.phone'" in str(error.value)
    assert f"on the import path or in {tmp_path}" in str(error.value)
    assert str(tmp_path) not in isolated_imports.path
