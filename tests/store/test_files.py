"""Unit tests of the run-directory files: the mask file format, the lock, safe paths (the writer:
tests/test_files.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from masklab import files as W
from masklab.errors import StoreError
from masklab.store import files as F
from masklab.store import paths as P
from masklab.store.bits import n_words, pack_layers
from masklab.store.lock import RunLock

REPO = Path(__file__).resolve().parents[2]


def _words(seed: int, sizes=(100, 64, 7)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return pack_layers([rng.random(s) < 0.5 for s in sizes])


def test_mask_file_round_trip_and_size(tmp_path):
    words = _words(0)
    data, checksum = F.mask_bytes(3, words)
    assert len(data) == F.HEADER_SIZE + 8 * len(words) == 64 + 8 * (n_words(100) + n_words(64) + n_words(7))
    path = tmp_path / "000003.mask"
    path.write_bytes(data)
    back = F.read_mask(path, len(words), checksum, mask_id=3)
    assert back.dtype == np.uint64 and np.array_equal(back, words)
    assert checksum == F.checksum(words)


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-8], "truncated"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d + b"\0" * 8, "truncated or padded"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
    (lambda d: b"XXXXXXXX" + d[8:], "not a masklab mask file"),
])
def test_damaged_mask_files_are_named(tmp_path, damage, message):
    words = _words(1)
    data, checksum = F.mask_bytes(0, words)
    path = tmp_path / "000000.mask"
    path.write_bytes(damage(data))
    with pytest.raises(StoreError, match=message) as err:
        F.read_mask(path, len(words), checksum, mask_id=0)
    assert str(path) in str(err.value)


def test_wrong_id_or_checksum_in_the_registry_is_refused(tmp_path):
    words = _words(2)
    data, checksum = F.mask_bytes(5, words)
    path = tmp_path / "m.mask"
    path.write_bytes(data)
    with pytest.raises(StoreError, match="holds mask 5"):
        F.read_mask(path, len(words), checksum, mask_id=4)
    with pytest.raises(StoreError, match="checksum"):
        F.read_mask(path, len(words), "0" * 64, mask_id=5)


def test_npy_files_are_never_unpickled(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StoreError, match="unreadable"):
        F.load_npy(path)
    path.write_bytes(W.npy_bytes(np.arange(3, dtype=np.float16)))
    assert F.load_npy(path).tolist() == [0, 1, 2]


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", ""])
def test_paths_inside_a_run_cannot_escape(tmp_path, rel):
    with pytest.raises(StoreError, match="refusing path"):
        P.inside(tmp_path, rel)


def test_paths_inside_a_run_cannot_escape_through_a_link(tmp_path):
    (tmp_path / "extras").symlink_to("/")
    with pytest.raises(StoreError, match="leaves the run directory"):
        P.inside(tmp_path, "extras/etc/passwd")
    assert P.inside(tmp_path, "masks/000001.json") == tmp_path / "masks" / "000001.json"


@pytest.mark.parametrize("text", ["../runs", "a/b", "/abs", ".hidden", "a..b", "", "x" * 200])
def test_run_ids_are_plain_names(text):
    with pytest.raises(StoreError, match="not a run id"):
        P.check_run_id(text)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_mask_ids_are_integers(bad):
    with pytest.raises(StoreError, match="mask id"):
        P.stem(bad)


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = RunLock(tmp_path / "lock").acquire()
    with pytest.raises(StoreError, match=rf"being written by another process \(pid {os.getpid()}\)"):
        RunLock(tmp_path / "lock").acquire()
    first.release()
    with RunLock(tmp_path / "lock") as again:
        assert again.held


def test_lock_of_a_killed_process_is_released(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from masklab.store.lock import RunLock
        RunLock(__import__("pathlib").Path({str(tmp_path / 'lock')!r})).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"pid {proc.pid}"):
            RunLock(tmp_path / "lock").acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        RunLock(tmp_path / "lock").acquire().release()  # not stuck
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def outside(tmp_path):
    """A directory outside the "run" with a file in it, and a function giving its files' bytes."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "precious").write_bytes(b"do not touch\n")
    return out, lambda: {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_the_lock_is_never_a_link(tmp_path, outside, kind):
    out, contents = outside
    before = contents()
    getattr(tmp_path / "lock", "symlink_to" if kind == "symlink" else "hardlink_to")(out / "precious")
    with pytest.raises(StoreError, match=rf"refusing to write {tmp_path / 'lock'}: it is "
                       + ("a symbolic link" if kind == "symlink" else r"not a plain file of its own \(a hard link\)")):
        RunLock(tmp_path / "lock").acquire()
    assert contents() == before  # today the pid write truncated it
