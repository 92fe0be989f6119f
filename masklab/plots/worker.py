"""Draw and write figures in a second Python process, alongside the computation that makes their tables.

Drawing and writing a figure is pure matplotlib work on small DataFrames, about 0.2-0.8 s each; `analyze`
makes seven. `FigureWriter` hands each figure (a module-level figure function of `masklab.plots`, its
DataFrame arguments, the path stem and formats) to one worker process started with the writer, and goes on
with the next analysis; `close()` waits for the figures still being drawn. On two cores the drawing then
overlaps the analyses instead of following them.

Same figures, byte for byte: the worker calls the same function on the same (pickled) data and writes with
`save_figure`. Anything that goes wrong in the worker (it cannot start, dies, or a figure raises) makes the
writer draw those figures itself in this process, where an error raises as it always did.

The worker is a plain ``python -m masklab.plots.worker`` subprocess fed length-prefixed pickles on stdin
(never `multiprocessing`: spawning would re-run a user's unguarded script, forking a process with torch's
and numba's threads is unsafe). It is used when the machine has at least 2 CPUs and
``$MASKLAB_FIGURE_PROCESS`` is not ``0``.
"""

from __future__ import annotations

import importlib
import itertools
import os
import pickle
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

FRAME = struct.Struct("<Q")
ENV_SWITCH = "MASKLAB_FIGURE_PROCESS"


def parallel_default() -> bool:
    """Whether figures go to a worker process by default: 2+ CPUs and not switched off in the environment."""
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (os.cpu_count() or 1) >= 2


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream):
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def draw(module: str, name: str, args: tuple, kwargs: dict, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Draw `module.name(*args, **kwargs)` and save it at `stem` in `formats` (what a job does)."""
    from masklab.plots._style import save_figure

    fig = getattr(importlib.import_module(module), name)(*args, **kwargs)
    return save_figure(fig, stem, formats=formats)


def figure_paths(stem, formats) -> list[Path]:
    """The files `save_figure(fig, stem, formats=formats)` writes."""
    base = Path(stem)
    if base.suffix.lower() in {".png", ".svg", ".pdf"}:
        base = base.with_suffix("")
    return [base.with_name(f"{base.name}.{fmt}") for fmt in formats]


class _Worker:
    """The worker process, its job queue and the thread that feeds it; one per Python process, started on
    first use and reused (a notebook's second `analyze` finds it ready)."""

    def __init__(self):
        import masklab

        env = dict(os.environ)
        root = str(Path(masklab.__file__).resolve().parent.parent)  # the same masklab, installed or not
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("MPLBACKEND", "Agg")
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, "-m", "masklab.plots.worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.queue: queue.Queue = queue.Queue()
        self.feeder = threading.Thread(target=self._feed, name="masklab-figures", daemon=True)
        self.feeder.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.feeder.is_alive()

    def _feed(self) -> None:
        """Write queued jobs to the worker (a thread, so that a full pipe never blocks the analyses)."""
        stdin = self.process.stdin
        try:
            while True:
                job = self.queue.get()
                if job is None:
                    break
                _send(stdin, job)
        except (OSError, ValueError):
            pass  # the worker is gone: the writer draws what it did not
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def receive(self):
        try:
            return _receive(self.process.stdout)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):
            return None

    def show_stderr(self) -> None:
        """Pass on what the worker wrote to stderr (warnings) since the last call."""
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace").strip()
            self.stderr.seek(0)
            self.stderr.truncate()
        except (OSError, ValueError):
            return
        if text:
            print(text, file=sys.stderr)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            self.queue.put(None)
            self.process.kill()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.show_stderr()
        self.process = None


_LOCK = threading.Lock()
_SHARED: _Worker | None = None


def _shared_worker() -> _Worker | None:
    """The process's worker, started (again) if there is none alive; None if it cannot start."""
    global _SHARED
    if _SHARED is not None and not _SHARED.alive():
        _SHARED.stop()
        _SHARED = None
    if _SHARED is None:
        try:
            _SHARED = _Worker()
        except OSError:
            return None
    return _SHARED


def stop_worker() -> None:
    """End this process's figure worker, if there is one (the next FigureWriter starts a new one)."""
    global _SHARED
    with _LOCK:
        if _SHARED is not None:
            _SHARED.stop()
            _SHARED = None


class FigureWriter:
    """Figures drawn in the worker process (or here, when `parallel` is False or the worker fails).

    ``submit(func, args, kwargs, stem, formats)`` returns at once with the paths the figure will have;
    ``close()`` returns when every figure submitted to this writer is written, with the seconds this
    process spent on figures and the seconds the worker spent drawing them. One writer at a time uses the
    worker (from its creation to `close`); a second one meanwhile draws in its own process.
    """

    def __init__(self, parallel: bool | None = None):
        self.parallel = parallel_default() if parallel is None else bool(parallel)
        self.jobs: dict[int, tuple] = {}
        self.waited = 0.0          # seconds this process spent on figures (submitting, waiting, fallbacks)
        self.drawn_elsewhere = 0.0  # seconds the worker spent drawing
        self.worker = None
        if self.parallel:
            if not _LOCK.acquire(blocking=False):  # another writer has the worker: draw here, never wait
                self.parallel = False
            else:
                self.worker = _shared_worker()
                if self.worker is None:
                    _LOCK.release()
                    self.parallel = False
        self._serial = next(_JOB_SERIAL)

    @property
    def process(self):
        return None if self.worker is None else self.worker.process

    def submit(self, func, args: tuple = (), kwargs: dict | None = None, stem=None,
               formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Draw ``func(*args, **kwargs)`` (a module-level figure function) into `stem` in `formats`."""
        start = time.perf_counter()
        job_id = (self._serial, len(self.jobs))
        job = (job_id, func.__module__, func.__qualname__, tuple(args), dict(kwargs or {}), str(stem),
               tuple(formats))
        self.jobs[job_id] = job
        if self.worker is not None:
            self.worker.queue.put(job)
        else:
            draw(*job[1:])
        self.waited += time.perf_counter() - start
        return figure_paths(stem, formats)

    def close(self) -> tuple[float, float]:
        """Wait for every figure; draw here whatever the worker did not. Returns (waited, drawn elsewhere)."""
        if self.worker is None:
            return self.waited, self.drawn_elsewhere
        start = time.perf_counter()
        done: dict = {}
        try:
            while len(done) < len(self.jobs):
                reply = self.worker.receive()
                if reply is None:      # the worker died: start afresh next time
                    self.worker.stop()
                    break
                job_id, ok, seconds, _detail = reply
                if job_id in self.jobs:
                    done[job_id] = ok
                    self.drawn_elsewhere += seconds
            self.worker.show_stderr()
        finally:
            self.worker = None
            _LOCK.release()
        for job_id, job in self.jobs.items():
            if not done.get(job_id):
                draw(*job[1:])  # here, so that an error surfaces with its own traceback
        self.waited += time.perf_counter() - start
        return self.waited, self.drawn_elsewhere

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.worker is None:
            return
        if exc_type is None:
            self.close()
        else:  # an analysis failed: its figures do not matter; drop the worker with its queue
            global _SHARED
            worker, self.worker = self.worker, None
            worker.stop()
            _SHARED = None
            _LOCK.release()


_JOB_SERIAL = itertools.count()


def main() -> int:
    """The worker: read jobs from stdin until it closes, draw each, reply (id, ok, seconds, error text)."""
    import matplotlib

    matplotlib.use("Agg")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        job = _receive(stdin)
        if job is None:
            return 0
        job_id, *rest = job
        start = time.perf_counter()
        try:
            draw(*rest)
            reply = (job_id, True, time.perf_counter() - start, "")
        except Exception:  # noqa: BLE001 - the parent draws it again and raises there
            reply = (job_id, False, time.perf_counter() - start, traceback.format_exc())
        _send(stdout, reply)


if __name__ == "__main__":
    sys.exit(main())
