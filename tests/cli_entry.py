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


def assert_one_line_error(code: int, out: str, err: str, *mentions: str) -> str:
    """A user mistake: a non-zero exit and exactly one `error:` line on stderr that names the problem (each of
    `mentions`, case-insensitive), with no traceback and no raw bytes. Returns the line."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code not in (0, None), f"exit status {code}; stderr: {err!r}"
    assert len(lines) == 1, f"expected one error line, got {len(lines)}: {err[:2000]!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in err and "weights_only" not in err, err[:2000]
    assert len(line) < 400, f"error line too long ({len(line)} chars): {line[:400]!r}"
    assert "\\x" not in line and line.isprintable(), f"raw bytes in the error line: {line!r}"
    for mention in mentions:
        assert mention.lower() in line.lower(), f"{mention!r} not in {line!r}"
    return line


def snapshot(*roots) -> dict[str, bytes]:
    """Every file under `roots` (files or directories) with its bytes, to show a failed command changed nothing."""
    from pathlib import Path

    files: dict[str, bytes] = {}
    for root in map(Path, roots):
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            files[str(path)] = path.read_bytes()
    return files


def database_dump(path) -> str:
    """A SQLite database's content as SQL: what "stored data unchanged" means for a WAL database, whose file bytes
    change when any reader checkpoints its journal."""
    import sqlite3

    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(connection.iterdump())
    finally:
        connection.close()
