"""An operator's first day: `hashsvc serve` and `token create --db` that cannot
do what they were asked fail at once with one line saying why, and a non-zero
exit code; nothing starts half-way."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import grpc
import pytest

from hashdb import safe_url
from hashsvc.api.server import StartupError, plaintext_warning, start_server
from hashsvc.client import cli
from hashsvc.client.client import Client, InsecureTransport
from hashsvc.core.config import Config, ImageLimits
from hashsvc.v1 import hashsvc_pb2 as pb
from tests.conftest import PG_URL
from tests.helpers import popen, start_harness
from tests.test_process import REPO


def _serve(*args: str, timeout: float = 20) -> tuple[int, str]:
    """Runs `hashsvc serve ARGS` that is expected to exit by itself: (exit code,
    stderr). One that keeps serving fails the test (and is stopped)."""
    proc = popen(
        [sys.executable, "-m", "hashsvc", "serve", "--workers", "1", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hashsvc serve {' '.join(args)} is still running after {timeout} s")
    return proc.returncode, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# -- item 17: a port in use


def test_second_serve_on_a_port_in_use_fails_at_start(tmp_path, make_harness):
    first = make_harness(f"sqlite:///{tmp_path}/first.db")
    code, err = _serve("--listen", first.address, "--db", f"sqlite:///{tmp_path}/second.db")
    line = _one_line(err)
    assert code == 1 and "in use" in line and first.address in line, err
    # the first server still answers every call: nothing was split off
    stubs, md = first.stubs("operator")
    for _ in range(8):
        stubs.curation.ListSets(pb.ListSetsRequest(), metadata=md, timeout=5)


def test_start_server_on_a_port_in_use_raises_and_leaves_nothing_open(tmp_path):
    first = start_harness(f"sqlite:///{tmp_path}/first.db")
    try:
        config = Config(
            listen=first.address, db_url=f"sqlite:///{tmp_path}/second.db", image=ImageLimits()
        )
        with pytest.raises(StartupError, match="in use"):
            start_server(config, hash_in_process=True)
        stubs, md = first.stubs("operator")
        assert stubs.curation.ListSets(pb.ListSetsRequest(), metadata=md, timeout=5) is not None
    finally:
        first.close()
    # the failed start holds nothing: the port is free once the first is gone
    again = start_server(config, hash_in_process=True)
    again.stop(grace=0)


# -- item 18: plaintext only on loopback, TLS whole or not at all


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "192.168.0.7:0", "db.internal:1"]
)
def test_plaintext_on_a_non_loopback_address_is_refused(listen):
    with pytest.raises(ValueError, match="allow_insecure"):
        Config(listen=listen)
    assert Config(listen=listen, allow_insecure=True).allow_insecure
    warning = plaintext_warning(Config(listen=listen, allow_insecure=True))
    assert "PLAINTEXT" in warning and listen in warning


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:50051", "127.9.9.9:0", "localhost:50051", "[::1]:50051", "unix:/tmp/s"]
)
def test_plaintext_on_loopback_needs_nothing(listen):
    assert plaintext_warning(Config(listen=listen)) == ""


@pytest.mark.parametrize(
    "tls",
    [
        {"tls_client_ca_file": "ca.pem"},
        {"tls_cert_file": "cert.pem"},
        {"tls_key_file": "key.pem"},
        {"tls_cert_file": "cert.pem", "tls_client_ca_file": "ca.pem"},
    ],
)
def test_a_partial_tls_config_is_an_error(tls):
    with pytest.raises(ValueError, match="tls_"):
        Config(**tls)


def test_serve_refuses_plaintext_and_partial_tls_in_one_line(tmp_path):
    db = f"sqlite:///{tmp_path}/s.db"
    # a private address: refused before any socket is bound
    code, err = _serve("--listen", "10.255.255.1:0", "--db", db)
    assert code == 2 and "allow_insecure" in _one_line(err), err
    config = tmp_path / "partial.toml"
    config.write_text(f'listen = "127.0.0.1:0"\ntls_client_ca_file = "{tmp_path}/ca.pem"\n')
    code, err = _serve("--config", str(config), "--db", db)
    assert code == 2 and "tls_client_ca_file" in _one_line(err), err


REMOTE = ["0.0.0.0:50051", "10.0.0.8:50051", "192.168.1.20:443", "hashsvc.example:50051",
          "dns:///hashsvc.example:50051", "[fd00::1]:50051"]  # fmt: skip


@pytest.fixture
def no_channels(monkeypatch):
    """Fails a test that would open a channel: refusals come before any traffic."""

    def refuse(*args, **kw):
        raise AssertionError(f"a channel was opened to {args[0]!r}")

    monkeypatch.setattr(grpc, "insecure_channel", refuse)
    monkeypatch.setattr(grpc, "secure_channel", refuse)


@pytest.mark.parametrize("server", REMOTE)
def test_client_refuses_to_send_a_token_in_clear_to_a_remote_server(server, no_channels):
    with pytest.raises(InsecureTransport, match="--insecure"):
        Client(server=server, token="hsv_secret")


@pytest.mark.parametrize("server", REMOTE)
def test_cli_refuses_a_token_in_clear_with_usage_exit_code(
    server, no_channels, monkeypatch, capsys
):
    monkeypatch.setenv("HASHSVC_TOKEN", "hsv_secret")
    monkeypatch.delenv("HASHSVC_TLS_CA", raising=False)
    for argv in (["stats", "--server", server], ["token", "list", "--server", server]):
        assert cli.main(argv) == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert "--insecure" in err and "hsv_secret" not in err
        assert len(err.strip().splitlines()) == 1


_INSECURE_CHANNEL = grpc.insecure_channel


def _recording_channel(opened: list):
    """grpc.insecure_channel that notes the target and returns a channel to a
    loopback port nobody calls (channels connect only when called)."""

    def channel(target, *args, **kw):
        opened.append(target)
        return _INSECURE_CHANNEL("127.0.0.1:9")

    return channel


def test_insecure_flag_lets_the_cli_send_in_clear(monkeypatch):
    opened = []
    monkeypatch.setattr(grpc, "insecure_channel", _recording_channel(opened))
    client = Client(server="10.0.0.8:50051", token="hsv_secret", insecure=True)
    assert opened == ["10.0.0.8:50051"] and client.metadata
    # every command that talks to a server takes --insecure
    commands = _commands_with_server_option(cli.build_parser())
    assert len(commands) > 20
    for name, sub in commands:
        assert any("--insecure" in a.option_strings for a in sub._actions), name
    assert cli.build_parser().parse_args(["stats", "--insecure"]).insecure is True


def test_insecure_flag_goes_before_the_command_too(monkeypatch, capsys):
    """`hashsvc --insecure --server H:P stats`, as `--server` and `--tls-ca`:
    the token is sent in clear (the channel is opened to the remote server,
    nobody answers there: exit 3), not refused with a usage error."""
    monkeypatch.setenv("HASHSVC_TOKEN", "hsv_secret")
    monkeypatch.delenv("HASHSVC_TLS_CA", raising=False)
    for argv in (
        ["--insecure", "--server", "10.0.0.8:50051", "stats"],
        ["--insecure", "token", "list", "--server", "10.0.0.8:50051"],
    ):
        opened = []
        monkeypatch.setattr(grpc, "insecure_channel", _recording_channel(opened))
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert opened == ["10.0.0.8:50051"], argv
        assert code == cli.EXIT_UNREACHABLE and "UNAVAILABLE" in err, err
    assert cli.build_parser().parse_args(["--insecure", "stats"]).global_insecure is True
    # without it the same command is refused before any channel is opened
    opened = []
    monkeypatch.setattr(grpc, "insecure_channel", _recording_channel(opened))
    assert cli.main(["--server", "10.0.0.8:50051", "stats"]) == cli.EXIT_USAGE
    assert opened == [] and "--insecure" in capsys.readouterr().err
    # a server-side command has no use for it: a usage error, not ignored
    assert cli.main(["--insecure", "serve", "--db", "sqlite:///x.db"]) == cli.EXIT_USAGE
    assert "--insecure is for commands that call a server" in capsys.readouterr().err


def _commands_with_server_option(parser, prefix=""):
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any("--server" in a.option_strings for a in sub._actions):
                    found.append((f"{prefix}{name}", sub))
                found += _commands_with_server_option(sub, f"{prefix}{name} ")
    return found


def test_no_token_and_loopback_need_no_flag(no_channels, monkeypatch):
    opened = []
    monkeypatch.setattr(grpc, "insecure_channel", _recording_channel(opened))
    Client(server="10.0.0.8:50051", token="")  # nothing secret to send
    for server in ("127.0.0.1:50051", "localhost:1", "[::1]:50051", "127.1.2.3:9"):
        Client(server=server, token="hsv_secret")
    assert len(opened) == 5


# -- item 19: a wrong store URL


def _token_create(db: str, timeout: float = 20) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = popen(
        [
            sys.executable,
            "-m",
            "hashsvc",
            "token",
            "create",
            "--role",
            "admin",
            "--db",
            db,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"token create --db {db} still running after {timeout} s")
    assert out == ""  # no token was made
    return proc.returncode, err, time.monotonic() - started


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def silent_server():
    """127.0.0.1:PORT that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


WRONG_URLS = {
    "no such database": (f"{PG_URL.rsplit('/', 1)[0]}/no_such_db_{os.getpid()}", "does not exist"),
    "nothing listens": ("postgresql://alice:s3cret-pw@127.0.0.1:{closed}/test", "refused"),
    "not postgresql": ("mysql://127.0.0.1/test", "unsupported store URL"),
}


@pytest.mark.parametrize("case", WRONG_URLS)
def test_a_wrong_store_url_fails_in_one_line_within_seconds(case, tmp_path):
    url, says = WRONG_URLS[case]
    url = url.format(closed=_closed_port())
    code, err, seconds = _token_create(url)
    line = _one_line(err)
    assert code != 0 and says in line and seconds < 10, (seconds, err)
    assert "s3cret-pw" not in err
    code, err = _serve("--listen", "127.0.0.1:0", "--db", url)
    line = _one_line(err)
    assert code != 0 and says in line and "s3cret-pw" not in err, err


def test_a_store_that_never_answers_times_out_in_one_line(silent_server, tmp_path):
    url = f"postgresql://127.0.0.1:{silent_server}/test"
    config = tmp_path / "c.toml"
    config.write_text("db_connect_timeout_seconds = 2\n")
    started = time.monotonic()
    code, err = _serve("--config", str(config), "--listen", "127.0.0.1:0", "--db", url)
    seconds = time.monotonic() - started
    line = _one_line(err)
    assert code != 0 and "timeout" in line and seconds < 10, (seconds, err)
    code, err, seconds = _token_create(url)  # the default: 5 s
    assert code != 0 and "timeout" in _one_line(err) and seconds < 12, (seconds, err)


def test_an_unusable_sqlite_path_fails_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    url = f"sqlite:///{tmp_path}/file/hashsvc.db"
    code, err, _ = _token_create(url)
    assert code != 0 and "hashsvc.db" in _one_line(err), err
    code, err = _serve("--listen", "127.0.0.1:0", "--db", url)
    assert code != 0 and "hashsvc.db" in _one_line(err), err


def test_printed_store_urls_hide_the_password_only():
    assert safe_url("postgresql://alice:pw@db.internal/hashsvc") == (
        "postgresql://alice:***@db.internal/hashsvc"
    )
    assert safe_url("postgresql://alice@db.internal/hashsvc") == (
        "postgresql://alice@db.internal/hashsvc"
    )
    assert "pw" not in safe_url("postgresql://db.internal/hashsvc?user=a&password=pw")
    assert safe_url("sqlite:///hashsvc.db") == "sqlite:///hashsvc.db"
