"""Training progress: a bar on a terminal, log lines (step, running loss, speed, time left) anywhere else."""

from __future__ import annotations

import io
import logging

import pytest

from vfmtok.training.progress import Progress, as_mode, format_seconds, resolve_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_seconds():
    assert format_seconds(42.4) == "42 s"
    assert format_seconds(75.2) == "1 min 15 s"
    assert format_seconds(3725) == "1 h 02 min"
    assert format_seconds(-3) == "0 s"


def test_modes():
    assert resolve_mode("auto", io.StringIO()) == "log"  # a file, a pipe, nohup: no bar
    assert resolve_mode("auto", _Tty()) == "bar"
    assert resolve_mode("none", _Tty()) == "none"
    assert as_mode(True) == "auto" and as_mode(False) == "none" and as_mode("log") == "log"
    with pytest.raises(ValueError, match="progress mode"):
        resolve_mode("fancy")


def test_log_lines_show_loss_speed_and_time_left(caplog):
    caplog.set_level(logging.INFO, logger="vfmtok.training.progress")
    bar = Progress(total=10, initial=2, desc="gpt", mode="log", every_s=3600.0)
    bar.set_postfix(loss="2.5000")
    for _ in range(8):
        bar.update(1)
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the first step and the last; nothing in between within every_s
    assert lines[0].startswith("gpt: step 3/10 (30%), loss 2.5000, ") and lines[0].endswith(" left")
    assert "step/s" in lines[0]
    assert lines[1].startswith("gpt: step 10/10 (100%)") and "took" in lines[1]


def test_disabled_and_none_show_nothing(caplog):
    caplog.set_level(logging.INFO, logger="vfmtok.training.progress")
    for bar in (Progress(5, mode="log", enabled=False), Progress(5, mode="none")):
        assert bar.mode == "none"
        bar.update(5)
        bar.close()
    assert not caplog.records


def test_bar_mode_uses_tqdm(capsys):
    bar = Progress(total=3, desc="tokenizer", mode="bar")
    bar.set_postfix(loss="0.1")
    bar.update(3)
    bar.close()
    err = capsys.readouterr().err
    assert "tokenizer" in err and "3/3" in err and "loss=0.1" in err
