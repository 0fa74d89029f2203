"""``make demo``'s set-up step says what it is about to install, and why, before apt runs."""

from __future__ import annotations

import sys

from vfmtok.cli import demo_setup


def test_says_so_before_apt_runs(monkeypatch, capsys):
    events = []
    have = iter([False, True])  # missing before, present after the install
    monkeypatch.setattr(demo_setup, "have_data", lambda: next(have))
    monkeypatch.setattr(demo_setup.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(demo_setup.os, "geteuid", lambda: 0, raising=False)

    class _Done:
        returncode = 0

    def fake_run(cmd, **kw):
        events.append(("run", cmd, capsys.readouterr().err))  # what was printed before this command
        return _Done()

    monkeypatch.setattr(demo_setup.subprocess, "run", fake_run)
    assert demo_setup.main() == 0
    assert len(events) == 1
    _, cmd, printed = events[0]
    assert cmd[1:3] == ["install", "-y"] and demo_setup.PACKAGE in cmd
    assert "running as root" in printed and demo_setup.PACKAGE in printed and "Fashion-MNIST" in printed
    assert "--data" in printed  # how to avoid it


def test_no_root_no_apt(monkeypatch, capsys):
    monkeypatch.setattr(demo_setup, "have_data", lambda: False)
    monkeypatch.setattr(demo_setup.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(demo_setup.os, "geteuid", lambda: 1000, raising=False)
    monkeypatch.setattr(demo_setup.subprocess, "run", lambda *a, **k: sys.exit("apt must not run"))
    assert demo_setup.main() == 2
    err = capsys.readouterr().err
    assert f"sudo apt-get install {demo_setup.PACKAGE}" in err and "--data PATH" in err
