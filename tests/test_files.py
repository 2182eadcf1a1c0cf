"""`tunelab.files`: atomic writes that never leave a truncated or temp file, and reads that fail in one line."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from tunelab import files
from tunelab.errors import TunelabError
from tunelab.files import atomic_write, read_json, read_text, shown


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_str_as_utf8_and_bytes_as_is_and_records_the_path(tmp_path):
    text, raw = tmp_path / "a.txt", tmp_path / "b.bin"
    start = len(files.WRITTEN)
    assert atomic_write(text, "héllo\n") == text
    assert atomic_write(raw, b"\x00\xff") == raw
    assert text.read_bytes() == "héllo\n".encode() and raw.read_bytes() == b"\x00\xff"
    assert files.WRITTEN[start:] == [text, raw]
    atomic_write(text, "lone \udcff surrogate")  # never a traceback for what argv decoding produces
    assert text.read_text() == "lone \\udcff surrogate"


def test_keeps_an_existing_files_mode_and_gives_new_files_the_umask(tmp_path):
    existing = tmp_path / "kept.json"
    existing.write_text("old")
    existing.chmod(0o640)
    atomic_write(existing, "new")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and existing.read_text() == "new"
    umask = os.umask(0o027)
    try:
        atomic_write(tmp_path / "fresh.json", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o640


def test_writes_through_a_symlink_and_keeps_the_link(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_fsync_leaves_the_target_byte_identical_and_no_temp_file(tmp_path, monkeypatch, failure):
    target = tmp_path / "params.json"
    target.write_bytes(b'{"old": 1}\n')

    def fail(fd):
        raise failure

    monkeypatch.setattr(os, "fsync", fail)
    if isinstance(failure, OSError):
        with pytest.raises(TunelabError, match=r"params.json: cannot write: No space left on device$"):
            atomic_write(target, "x" * 10_000)
    else:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, "x" * 10_000)
    assert target.read_bytes() == b'{"old": 1}\n' and leftovers(tmp_path) == []


def test_a_file_size_limit_fails_in_one_line_and_changes_nothing(tmp_path):
    """RLIMIT_FSIZE makes the write itself fail (EFBIG) part-way, in a subprocess so the limit stays there."""
    target = tmp_path / "big.json"
    target.write_bytes(b"old bytes\n")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from tunelab.files import atomic_write\n"
        "from tunelab.errors import TunelabError\n"
        "try:\n"
        "    atomic_write(sys.argv[1], 'y' * 100_000)\n"
        "except TunelabError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{target}: cannot write: File too large\n"
    assert target.read_bytes() == b"old bytes\n" and leftovers(tmp_path) == []


def test_unwritable_targets_are_one_line(tmp_path):
    with pytest.raises(TunelabError, match=r": is a directory, not a file$"):
        atomic_write(tmp_path, "x")
    with pytest.raises(TunelabError, match=r"x.json: directory .*missing does not exist$"):
        atomic_write(tmp_path / "missing" / "x.json", "x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: directory permissions do not apply")
        with pytest.raises(TunelabError, match=r"locked/x.json: cannot write: Permission denied$"):
            atomic_write(locked / "x.json", "x")
    finally:
        locked.chmod(0o700)


def test_reads_fail_in_one_line_naming_the_file_and_what_was_expected(tmp_path):
    what = "a test file"
    cases = {
        "missing.json": (None, "file not found (expected a test file)"),
        "binary.json": (os.urandom(2000) + b"\xff", "is not UTF-8 text (byte 0x"),
        "empty.json": (b"  \n", "is empty (expected a test file)"),
        "broken.json": (b'{"a": ', "is not JSON (Expecting value at line 1 column 7); expected a test file"),
        "deep.json": (b"[" * 100_000 + b"]" * 100_000, "is nested too deeply to be a test file"),
        "digits.json": (b"1" * 5000, "is not JSON (Exceeds the limit"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(TunelabError) as exc:
            read_json(path, what)
        line = str(exc.value)
        assert line.startswith(f"{path}: ") and message in line and "\n" not in line and len(line) < 200, line
    with pytest.raises(TunelabError, match=r": is a directory, not a test file$"):
        read_text(tmp_path, what)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TunelabError, match=r"fifo: is not a regular file \(expected a test file\)$"):
        read_text(tmp_path / "fifo", what)
    (tmp_path / "large").write_bytes(b"x" * 101)
    with pytest.raises(TunelabError, match=r"large: is larger than 100 bytes, too large for a test file$"):
        read_text(tmp_path / "large", what, limit=100)


def test_shown_is_short_and_printable():
    assert shown("fast") == "'fast'"
    assert shown("a\x00\x1bb") == "'a??b'"
    assert shown("x" * 5000) == "'" + "x" * 36 + "..."
    assert (shown(None), shown(True), shown(-3), shown(float("nan"))) == ("null", "true", "-3", "nan")
    assert (shown([1]), shown({"a": 1}), shown(10**5000)) == ("a list", "an object", "a very large integer")
