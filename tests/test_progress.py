"""Progress bars: on for long work on a terminal, off for logs and tiny jobs."""

from __future__ import annotations

import edgeopt
import models
from edgeopt import progress


def test_bars_are_off_for_non_terminals_and_tiny_jobs(monkeypatch):
    monkeypatch.delenv("EDGEOPT_PROGRESS", raising=False)
    assert not progress.enabled(1000)  # pytest's stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress.enabled(1000) and not progress.enabled(progress.MIN_STEPS - 1)


def test_forced_bars_show_calibration_and_the_search(monkeypatch, capsys):
    monkeypatch.setenv("EDGEOPT_PROGRESS", "1")
    case = models.CASES["conv_net"]
    edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=case.feeds(1, 32))
    err = capsys.readouterr().err
    assert "calibrating" in err and "int8 search" in err
    monkeypatch.setenv("EDGEOPT_PROGRESS", "0")
    edgeopt.quantize(case.build(), edgeopt.Int8Config(), calibration=case.feeds(1, 32))
    assert capsys.readouterr().err == ""
