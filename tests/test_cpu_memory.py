"""The CLI's allocator setting (eanet.cpu_memory): applied on glibc, switchable off, harmless elsewhere."""

from __future__ import annotations

import ctypes
import sys

import pytest

from eanet import cpu_memory


def _glibc() -> bool:
    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018 - the attribute exists on glibc only
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not (sys.platform.startswith("linux") and _glibc()), reason="glibc's mallopt: Linux with glibc")
def test_glibc_takes_both_thresholds(monkeypatch):
    monkeypatch.delenv("EANET_MALLOPT", raising=False)
    assert cpu_memory.keep_freed_memory() is True


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_switched_off_by_the_environment(monkeypatch, value):
    monkeypatch.setenv("EANET_MALLOPT", value)
    assert cpu_memory.keep_freed_memory() is False


def test_does_nothing_off_linux(monkeypatch):
    monkeypatch.delenv("EANET_MALLOPT", raising=False)
    monkeypatch.setattr(cpu_memory.sys, "platform", "darwin")
    assert cpu_memory.keep_freed_memory() is False


def test_the_cli_applies_it_once_per_process(monkeypatch, capsys):
    from eanet import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    cli.main(["--version"])
    assert "version" in capsys.readouterr().out
    assert calls == [1]
