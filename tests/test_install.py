"""deploy/install.sh into a temporary prefix: installs, is idempotent, keeps the operator's
flags, and uninstalls. (systemd does not run on the test machines, so the script's systemctl
branch is not exercised here; the unit it installs is verified.)"""

import os
import shutil
import subprocess

import pytest

from helpers import ROOT

pytestmark = pytest.mark.root
SCRIPT = str(ROOT / "deploy" / "install.sh")


def run_install(tmp_path, *args):
    env = dict(os.environ, TCPWATCH_PREFIX=str(tmp_path / "opt"), TCPWATCH_UNIT_DIR=str(tmp_path / "units"),
               TCPWATCH_DEFAULTS=str(tmp_path / "default" / "tcpwatch"))
    return subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=600)


def test_install_twice_then_uninstall(tmp_path):
    first = run_install(tmp_path)
    assert first.returncode == 0, first.stderr
    tcpwatch = tmp_path / "opt" / "venv" / "bin" / "tcpwatch"
    unit = tmp_path / "units" / "tcpwatch.service"
    defaults = tmp_path / "default" / "tcpwatch"
    assert f"ExecStart={tcpwatch} run $TCPWATCH_ARGS" in unit.read_text()
    assert subprocess.run([str(tcpwatch), "--version"], capture_output=True, text=True).stdout.startswith("tcpwatch ")
    # The venv sees the distribution's bcc (never PyPI's unrelated "bcc").
    subprocess.run([str(tmp_path / "opt" / "venv" / "bin" / "python"), "-c", "import bcc, tcpwatch.sources.bpf"],
                   check=True)
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    defaults.write_text('TCPWATCH_ARGS="--web.listen-address=127.0.0.1:9787"\n')
    unit_before = unit.read_text()
    second = run_install(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "keeping" in second.stdout
    assert defaults.read_text() == 'TCPWATCH_ARGS="--web.listen-address=127.0.0.1:9787"\n'
    assert unit.read_text() == unit_before

    gone = run_install(tmp_path, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert not unit.exists() and not (tmp_path / "opt").exists() and defaults.exists()


def test_bad_argument_is_one_line_and_exit_2(tmp_path):
    result = run_install(tmp_path, "--frobnicate")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--uninstall" in result.stderr
    assert not (tmp_path / "opt").exists()
