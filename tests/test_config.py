"""Listen addresses, config files and their merge with flags."""

import pytest

from tcpwatch.config import ConfigError, ListenAddress, build_parser, parse_listen_address, run_settings


@pytest.mark.parametrize("text,expected", [
    (":9787", ListenAddress("", 9787)),
    ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
    ("[::1]:9787", ListenAddress("::1", 9787)),
    ("localhost:65535", ListenAddress("localhost", 65535)),
])
def test_listen_addresses(text, expected):
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["9787", "host:", "host:-1", "host:65536", "::1:80", "[::g]:80", "[::1]"])
def test_bad_listen_addresses(text):
    with pytest.raises(ConfigError):
        parse_listen_address(text)


def settings(argv):
    return run_settings(build_parser().parse_args(["run", *argv]))


def test_defaults():
    s = settings([])
    assert (str(s.listen_address), s.telemetry_path, s.process_max_series, s.listen_max_ports,
            s.process_enabled, s.log_format) == (":9787", "/metrics", 20, 64, True, "logfmt")


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "tcpwatch.yml"
    path.write_text("web.listen-address: '127.0.0.1:9000'\ncollector.process.max-series: 5\n"
                    "collector.process: false\nlog.format: json\n")
    s = settings(["--config", str(path), "--collector.process.max-series", "7"])
    assert s.listen_address == ListenAddress("127.0.0.1", 9000)
    assert (s.process_max_series, s.process_enabled, s.log_format) == (7, False, "json")
    assert settings(["--config", str(path), "--collector.process"]).process_enabled is True


@pytest.mark.parametrize("body,words", [
    ("- a list\n", "mapping"),
    ("collector.process: 'yes'\n", "true or false"),
    ("collector.process.max-series: 1.5x\n", "whole number"),
    ("web.telemetry-path: metrics\n", "starting with /"),
    ("web.listen-address: 9787\n", "string"),
    ("collector.port.include: [5432, http]\n", "'http' is not a port"),
    ("collector.port.include: true\n", "list of ports"),
])
def test_config_file_errors(tmp_path, body, words):
    path = tmp_path / "c.yml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=words):
        settings(["--config", str(path)])


def test_port_include_from_flag_and_file(tmp_path):
    assert settings(["--collector.port.include", "5432, 6379"]).port_include == {5432, 6379}
    path = tmp_path / "c.yml"
    path.write_text("collector.port.include: [443, 5432]\n")
    assert settings(["--config", str(path)]).port_include == {443, 5432}
    assert settings([]).port_include == frozenset()


def test_empty_config_file_is_fine(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert settings(["--config", str(path)]).telemetry_path == "/metrics"
