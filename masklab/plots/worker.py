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


class FigureWriter:
    """Figures drawn in a worker process (or here, when `parallel` is False or the worker fails).

    ``submit(func, args, kwargs, stem, formats)`` returns at once with the paths the figure will have;
    ``close()`` returns when every figure is written, with the seconds this process waited for them and
    the seconds the worker spent drawing.
    """

    def __init__(self, parallel: bool | None = None):
        self.parallel = parallel_default() if parallel is None else bool(parallel)
        self.jobs: dict[int, tuple] = {}
        self.waited = 0.0          # seconds this process spent on figures (submitting, waiting, fallbacks)
        self.drawn_elsewhere = 0.0  # seconds the worker spent drawing
        self.process = None
        self._stderr = None
        if self.parallel:
            self._start()

    def _start(self) -> None:
        import masklab

        env = dict(os.environ)
        root = str(Path(masklab.__file__).resolve().parent.parent)  # the same masklab, installed or not
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("MPLBACKEND", "Agg")
        try:
            self._stderr = tempfile.TemporaryFile()
            self.process = subprocess.Popen([sys.executable, "-m", "masklab.plots.worker"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        except OSError:
            self.parallel, self.process = False, None
            return
        self._queue: queue.Queue = queue.Queue()
        self._feeder = threading.Thread(target=self._feed, name="masklab-figures", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        """Write queued jobs to the worker (a thread, so that a full pipe never blocks the analyses)."""
        stdin = self.process.stdin
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    break
                _send(stdin, job)
        except (OSError, ValueError):
            pass  # the worker is gone: close() draws what it did not
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def submit(self, func, args: tuple = (), kwargs: dict | None = None, stem=None,
               formats: tuple[str, ...] = ("png",)) -> list[Path]:
        """Draw ``func(*args, **kwargs)`` (a module-level figure function) into `stem` in `formats`."""
        start = time.perf_counter()
        kwargs = dict(kwargs or {})
        job_id = len(self.jobs)
        job = (job_id, func.__module__, func.__qualname__, tuple(args), kwargs, str(stem), tuple(formats))
        self.jobs[job_id] = job
        if self.parallel:
            self._queue.put(job)
        else:
            draw(*job[1:])
        self.waited += time.perf_counter() - start
        return figure_paths(stem, formats)

    def close(self) -> tuple[float, float]:
        """Wait for every figure; draw here whatever the worker did not. Returns (waited, drawn elsewhere)."""
        if not self.parallel or self.process is None:
            return self.waited, self.drawn_elsewhere
        start = time.perf_counter()
        self._queue.put(None)
        done: dict[int, bool] = {}
        stdout = self.process.stdout
        try:
            while len(done) < len(self.jobs):
                reply = _receive(stdout)
                if reply is None:
                    break
                job_id, ok, seconds, _detail = reply
                done[job_id] = ok
                self.drawn_elsewhere += seconds
        except (OSError, EOFError, pickle.UnpicklingError):
            pass
        self._feeder.join(timeout=60)
        try:
            stdout.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
        self._show_stderr()
        for job_id, job in self.jobs.items():
            if not done.get(job_id):
                draw(*job[1:])  # here, so that an error surfaces with its own traceback
        self.waited += time.perf_counter() - start
        self.process = None
        return self.waited, self.drawn_elsewhere

    def _show_stderr(self) -> None:
        if self._stderr is None:
            return
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        self._stderr.close()
        if text:
            print(text, file=sys.stderr)

    def __enter__(self) -> FigureWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            if exc[0] is None:
                self.close()
            else:  # an analysis failed: stop drawing, keep its error
                self.process.kill()
                self.process = None


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
