"""Distances on a real `dask scheduler` / `dask worker` pair started here (loopback only, dashboards on
loopback), started the way docs/scale.md says; addresses that are not a Dask scheduler are refused in one
line and in bounded time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab.analysis import tiles
from masklab.cli import main

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[2]
DASK = str(Path(sys.executable).with_name("dask"))
# the commands of docs/scale.md ("A scheduler and workers by hand"), loopback and a free port here
SCHEDULER = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
WORKER = ["worker", "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _wait(predicate, what: str, timeout: float = 90.0, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: a dask process ended ({proc.returncode})")
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class Pair:
    """A `dask scheduler` and `workers` `dask worker`s, as subprocesses; `close` ends them all."""

    def __init__(self, folder: Path, workers: int, preload: str | None = None):
        if not os.path.exists(DASK):
            pytest.skip("no `dask` command beside this Python")
        self.file = folder / "scheduler.json"
        self.procs = [subprocess.Popen([DASK, *SCHEDULER, "--scheduler-file", str(self.file)], env=_env(),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        _wait(self.file.exists, "the scheduler file", procs=self.procs)
        _wait(lambda: "address" in self._info(), "the scheduler's address", procs=self.procs)
        self.address = self._info()["address"]
        for _ in range(workers):
            self.add_worker(preload)

    def _info(self) -> dict:
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def add_worker(self, preload: str | None = None) -> None:
        extra = ["--preload", preload] if preload else []
        self.procs.append(subprocess.Popen([DASK, *WORKER, *extra, "--scheduler-file", str(self.file)], env=_env(),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    started = Pair(tmp_path_factory.mktemp("dask"), workers=2)
    from distributed import Client

    with Client(started.address, timeout="30s") as client:
        client.wait_for_workers(2, timeout=90)
    yield started
    started.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return masklab.generate(runs_dir=tmp_path_factory.mktemp("runs"), masks=6, epochs=1, width=0.25)


def test_docs_start_the_pair_this_way():
    text = (REPO / "docs" / "scale.md").read_text()
    assert "dask scheduler --host 127.0.0.1 --port 8786 --dashboard-address 127.0.0.1:8787" in text
    assert "dask worker tcp://127.0.0.1:8786 --host 127.0.0.1 --nthreads 1 --dashboard-address 127.0.0.1:0" in text


def test_distances_on_a_real_scheduler_equal_one_process_and_leave_no_map_open(pair, run, tmp_path, capsys):
    here, there = tmp_path / "here.npy", tmp_path / "there.npy"
    assert main(["distances", str(run.path), "--per-layer", "--metric", "jaccard", "--out", str(here),
                 "--quiet"]) == 0
    assert main(["distances", str(run.path), "--per-layer", "--metric", "jaccard", "--out", str(there),
                 "--scheduler", pair.address, "--quiet"]) == 0
    assert np.array_equal(np.load(here), np.load(there))
    from distributed import Client

    def maps_of_bits() -> int:
        with open("/proc/self/maps") as f:
            return sum("masks.bits" in line for line in f)

    with Client(pair.address, timeout="30s") as client:
        assert set(client.run(maps_of_bits).values()) == {0}  # the workers hold no map of the run's bits
        workers = list(client.scheduler_info()["workers"])
        assert [client.submit(tiles.worker_threads, workers=[w], pure=False).result() for w in workers] == [1, 1]


RECORDER = '''
import json, os
import masklab.analysis.tiles as tiles

_real = getattr(tiles.intersection_counts, "__wrapped__", tiles.intersection_counts)  # (imported twice)


def intersection_counts(*args, threads=None, **kwargs):
    with open(os.environ["MASKLAB_THREADS_LOG"], "a") as f:
        f.write(json.dumps(threads) + "\\n")
    return _real(*args, threads=threads, **kwargs)


intersection_counts.__wrapped__ = _real
tiles.intersection_counts = intersection_counts
'''


@pytest.mark.timeout(240)
def test_tiles_wait_for_a_first_worker_and_use_its_threads(run, tmp_path, monkeypatch):
    """A scheduler without workers (a dask-jobqueue cluster just scaled): the computation waits for one,
    and each tile's kernel runs on that worker's one thread (not on every core of the node)."""
    log = tmp_path / "threads.log"
    monkeypatch.setenv("MASKLAB_THREADS_LOG", str(log))
    (tmp_path / "recorder.py").write_text(RECORDER)
    lone = Pair(tmp_path, workers=0)
    try:
        from distributed import Client

        with Client(lone.address, timeout="30s") as client:
            results: dict = {}
            worker = threading.Thread(target=lambda: results.update(
                table=masklab.distances(run.masks, metric="hamming", client=client, form="square")))
            worker.start()
            time.sleep(2)
            lone.add_worker(str(tmp_path / "recorder.py"))
            worker.join(180)
            assert not worker.is_alive()
            assert results["table"].equals(masklab.distances(run.masks, metric="hamming", form="square"))
        threads = [json.loads(line) for line in log.read_text().splitlines()]
        assert threads and set(threads) == {1}
    finally:
        lone.close()


@pytest.mark.timeout(120)
def test_no_worker_ever_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setattr(tiles, "WORKER_WAIT_S", 2)
    lone = Pair(tmp_path, workers=0)
    try:
        from distributed import Client

        with Client(lone.address, timeout="30s") as client:
            with pytest.raises(masklab.UserError, match="no Dask worker joined the scheduler at .* within 2 s"):
                masklab.distances(run.masks, client=client)
    finally:
        lone.close()


@pytest.mark.parametrize("address, said", [
    ("bogus", "is not an address (no port)"),
    ("tcp://127.0.0.1", "is not an address (no port)"),
    ("tcp://127.0.0.1:99999", "out of range"),
    ("http://127.0.0.1:8787", "http:// is a web address"),
    ("inproc://x", "inproc:// is an address inside one Python process"),
    ("tls://127.0.0.1:8786", "tls:// needs certificates"),
])
def test_bad_scheduler_addresses_are_one_line(run, tmp_path, capsys, address, said):
    assert main(["distances", str(run.path), "--scheduler", address, "--out", str(tmp_path / "d.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "d.npy").exists()


def _serve(answer: bytes | None) -> tuple[socket.socket, int]:
    """A loopback TCP service that accepts and then says nothing (None) or `answer` to anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if answer is not None:
                try:
                    conn.recv(4096)
                    conn.sendall(answer)
                except OSError:
                    pass

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


@pytest.mark.timeout(60)
def test_a_service_that_never_speaks_dask_is_a_protocol_mismatch_in_bounded_time(run, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(tiles, "HANDSHAKE_TIMEOUT_S", 2)
    assert tiles.HANDSHAKE_TIMEOUT_S <= 20
    for answer, said in [(None, "did not speak Dask's protocol within 2 s (a protocol mismatch"),
                         (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "answered in another protocol "
                          "than Dask's (a protocol mismatch")]:
        server, port = _serve(answer)
        try:
            started = time.monotonic()
            assert main(["distances", str(run.path), "--scheduler", f"127.0.0.1:{port}", "--out",
                         str(tmp_path / "d.npy")]) == 2
            assert time.monotonic() - started < 15
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and said in err, err
        finally:
            server.close()


def test_a_worker_address_is_not_a_scheduler(pair, run, tmp_path, capsys):
    from distributed import Client

    with Client(pair.address, timeout="30s") as client:
        worker = next(iter(client.scheduler_info()["workers"]))
    assert main(["distances", str(run.path), "--scheduler", worker, "--out", str(tmp_path / "d.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a Dask Worker, not a scheduler" in err, err

