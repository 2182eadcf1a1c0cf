"""Running the `tunelab` console entry point in-process, as a user runs it."""

from __future__ import annotations

import sys

import pytest

from tunelab.cli import main


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr): a TunelabError becomes one line on stderr and exit status 2."""
    monkeypatch.setattr(sys, "argv", ["tunelab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err
