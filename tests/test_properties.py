"""Property-based tests (hypothesis) for everything that parses operator input: the listen
address, port ranges, the config file, the web config file, and Authorization headers. Any
input gives either a value or the one error type the CLI turns into exit 2, never a crash."""

import argparse
import base64
import ipaddress
import os
import tempfile

import bcrypt
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tcpwatch import webconfig
from tcpwatch.config import (ConfigError, ListenAddress, load_config_file, parse_listen_address,
                             parse_port_range)

ports = st.integers(min_value=0, max_value=65535)
hosts = st.one_of(
    st.just(""),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}\Z"),
)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12)


def write(text):
    fd, path = tempfile.mkstemp(suffix=".yml")
    with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    return path


@example(":²")
@given(st.text(max_size=60))
def test_listen_address_never_crashes(text):
    try:
        address = parse_listen_address(text)
    except ConfigError:
        return
    assert isinstance(address, ListenAddress) and 0 <= address.port <= 65535


@given(hosts, ports)
def test_listen_address_round_trips(host, port):
    address = parse_listen_address(str(ListenAddress(host, port)))
    assert address.port == port
    if ":" in host:
        assert ipaddress.IPv6Address(address.host) == ipaddress.IPv6Address(host)
    else:
        assert address.host == host


@example("²")          # found by hypothesis: isdigit() is true, int() refuses it
@example("1-¹²")
@given(st.one_of(st.text(max_size=20), st.integers(), st.none()))
def test_port_range_is_ordered_and_bounded(text):
    try:
        result = parse_port_range(text)
    except argparse.ArgumentTypeError:
        return
    assert result is None or 1 <= result[0] <= result[1] <= 65535


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_port_range_round_trips(a, b):
    lo, hi = sorted((a, b))
    assert parse_port_range(f"{lo}-{hi}") == (lo, hi)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), yaml_values.map(lambda v: yaml.safe_dump(v))))
def test_config_file_gives_settings_or_one_config_error(text):
    path = write(text)
    try:
        values = load_config_file(path)
        assert isinstance(values, dict)
    except ConfigError as exc:
        assert "\n" not in str(exc)
    finally:
        os.unlink(path)


web_keys = st.sampled_from(["tls_server_config", "http_server_config", "basic_auth_users", "other"])
web_documents = st.dictionaries(web_keys, yaml_values, max_size=3)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), web_documents.map(lambda v: yaml.safe_dump(v))))
def test_web_config_gives_a_config_or_one_config_error(text):
    path = write(text)
    try:
        config = webconfig.load(path)
        assert config.tls is None or config.tls.verify_mode is not None
    except ConfigError as exc:
        assert "\n" not in str(exc)
    finally:
        os.unlink(path)


HASH = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode())))
def test_authorization_header_never_crashes_and_only_the_right_password_passes(header):
    config = webconfig.WebConfig(users={"prometheus": HASH.encode()})
    right = "Basic " + base64.b64encode(b"prometheus:right").decode()
    assert config.authorized(header) is (header == right)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z"), st.just(HASH), min_size=1, max_size=3))
def test_valid_users_load(users):
    path = write(yaml.safe_dump({"basic_auth_users": users}))
    try:
        assert set(webconfig.load(path).users) == set(users)
    finally:
        os.unlink(path)
