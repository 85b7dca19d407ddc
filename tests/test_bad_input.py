"""Bad input: exit code 2, one line on stderr, no traceback, nothing left listening."""

import socket

import pytest

from peers import assert_rejected, run


def test_unknown_flag():
    assert_rejected(run("run", "--web.bogus", "x"), "--web.bogus")


def test_unknown_command():
    assert_rejected(run("frobnicate"), "frobnicate")


@pytest.mark.parametrize("address", ["nocolon", "127.0.0.1:99999", "127.0.0.1:http", "::1:80",
                                     "[zz::1]:80", "no.such.host.invalid:9787"])
def test_malformed_listen_address(address):
    assert_rejected(run("run", "--web.listen-address", address), address)


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_rejected(run("run", "--web.listen-address", f"127.0.0.1:{port}"), "in use")


def test_negative_bound():
    assert_rejected(run("run", "--collector.process.max-series", "-1"), "-1")


def test_bad_port_list():
    assert_rejected(run("run", "--collector.port.include", "5432,70000"), "70000")


def test_ladder_does_not_combine_with_json_or_state():
    assert_rejected(run("trace", "--ladder", "--json"), "--json")
    assert_rejected(run("trace", "--ladder", "--state", "close_wait"), "--state")
    assert_rejected(run("trace", "--ladder.timeout", "0"), "0")
    assert_rejected(run("trace", "--relative"), "--relative")


def test_bad_log_level():
    assert_rejected(run("run", "--log.level", "loud"), "loud")


def test_unreadable_config(tmp_path):
    assert_rejected(run("run", "--config", str(tmp_path / "missing.yml")), "missing.yml")


@pytest.mark.parametrize("body,words", [
    ("web.listen-address: [unclosed\n", "not valid YAML"),
    ("web.listen_adress: ':1'\n", "web.listen_adress"),            # unknown key
    ("collector.listen.max-ports: -3\n", "collector.listen.max-ports"),  # negative bound
    ("ebpf: sometimes\n", "ebpf"),
])
def test_bad_config_file(tmp_path, body, words):
    path = tmp_path / "c.yml"
    path.write_text(body)
    assert_rejected(run("run", "--config", str(path)), words)


def test_config_file_values_apply_and_flags_win(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("web.listen-address: 'nocolon'\nlog.level: debug\n")
    # the file's bad address is overridden by a good flag; the bad flag then fails on the port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_rejected(run("run", "--config", str(path), "--web.listen-address",
                            f"127.0.0.1:{port}"), str(port))
    assert_rejected(run("run", "--config", str(path)), "nocolon")
