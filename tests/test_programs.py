"""`python -m mixvlp_ds <program>`: every program is reachable by name and prints its help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mixvlp_ds.programs import PROGRAMS, dispatch


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_program_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's --help exits 0 after printing
        dispatch([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_an_unknown_or_missing_program_is_exit_status_2(capsys):
    assert dispatch(["quickstrat"]) == 2
    assert "no program 'quickstrat'" in capsys.readouterr().err
    assert dispatch([]) == 2
    assert dispatch(["--help"]) == 0
    assert "python -m mixvlp_ds quickstart" in capsys.readouterr().out


def test_python_dash_m_reaches_the_dispatcher():
    out = subprocess.run([sys.executable, "-m", "mixvlp_ds", "evaluate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "python -m mixvlp_ds evaluate" in out.stdout
