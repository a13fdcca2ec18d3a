"""The SDK's TLS options: what `tls=` accepts, files read once when the
options are made, and a clear error for a file that cannot be read or a
certificate without its key."""

from __future__ import annotations

import pytest

from sdk import TlsOptions
from sdk.channel import tls_options


@pytest.fixture
def files(tmp_path):
    for name in ("ca.pem", "client.crt", "client.key"):
        (tmp_path / name).write_text(f"{name}\n")
    return tmp_path


def test_true_trusts_the_systems_roots_false_is_plain_tcp():
    assert tls_options(True) == TlsOptions()
    assert tls_options(False) is None


def test_the_files_are_read_once_when_the_options_are_made(files):
    options = TlsOptions(ca_file=str(files / "ca.pem"))
    (files / "ca.pem").unlink()
    assert options.credentials() is not None  # a new channel needs no file


def test_an_unreadable_file_or_a_certificate_without_its_key_is_refused(files):
    with pytest.raises(ValueError, match=r"missing\.pem"):
        TlsOptions(ca_file=str(files / "missing.pem"))
    with pytest.raises(ValueError, match="key_file"):
        TlsOptions(cert_file=str(files / "client.crt"))


def test_tls_takes_only_a_flag_or_options():
    with pytest.raises(TypeError):
        tls_options("ca.pem")
