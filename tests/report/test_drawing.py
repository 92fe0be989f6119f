"""Figures drawn beside the analysis (masklab.report.drawing): the same files as drawn here, a figure's error
reaches the caller, a worker that dies costs no figure, and nothing is drawn beside where it cannot be."""

import hashlib
import multiprocessing
import os
import shutil
import signal
import time

import pytest

from masklab.errors import UserError
from masklab.plots._style import new_figure
from masklab.report import analyze, stages
from masklab.report import drawing as D
from masklab.store.run import open_run

PARENT = os.getpid()
beside_only = pytest.mark.skipif(not D.can_draw_beside(), reason="needs Linux, fork and 2 cores")


def line_plot(height: float, *, title: str = "a line"):
    fig = new_figure(3, 2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, height])
    ax.set(title=title, xlabel="t", ylabel="height (units)")
    return fig


def refused_plot():
    raise UserError("this figure's table is empty")


def dies_in_a_worker(height: float):
    if os.getpid() != PARENT:
        os._exit(3)  # the worker dies (killed, out of memory) while drawing
    return line_plot(height)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@beside_only
def test_figures_drawn_beside_are_the_bytes_drawn_here(tmp_path):
    for beside in (False, True):
        drawer = D.FigureDrawer(beside=beside)
        for i in range(3):
            drawer.draw(line_plot, (i + 1.0,), {"title": f"line {i}"}, tmp_path / str(beside) / f"f{i}", ("png", "svg"))
        drawer.finish()
        assert drawer.executor is None and drawer.seconds > 0
    for i in range(3):
        for fmt in ("png", "svg"):
            assert digest(tmp_path / "True" / f"f{i}.{fmt}") == digest(tmp_path / "False" / f"f{i}.{fmt}")


@beside_only
def test_a_figures_error_in_the_worker_reaches_the_caller_as_it_is(tmp_path):
    drawer = D.FigureDrawer(beside=True)
    drawer.draw(refused_plot, (), {}, tmp_path / "bad", ("png",))
    with pytest.raises(UserError, match="table is empty"):
        drawer.finish()
    assert drawer.executor is None  # the worker is stopped either way


@beside_only
def test_figures_whose_worker_died_are_drawn_here(tmp_path):
    drawer = D.FigureDrawer(beside=True)
    drawer.draw(dies_in_a_worker, (2.0,), {}, tmp_path / "a", ("png",))
    drawer.draw(line_plot, (1.0,), {}, tmp_path / "b", ("png",))
    drawer.finish()
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0


def slow_plot(height: float):
    time.sleep(1.0)
    return line_plot(height)


@beside_only
def test_ctrl_c_reaching_the_worker_leaves_it_to_the_caller(tmp_path):
    drawer = D.FigureDrawer(beside=True)
    drawer.draw(slow_plot, (1.0,), {}, tmp_path / "slow", ("png",))
    time.sleep(0.3)
    for pid in list(drawer.executor._processes):  # Ctrl-C reaches the whole process group
        os.kill(pid, signal.SIGINT)
    drawer.finish()  # neither a traceback nor a lost figure: the caller decides what an interrupt stops
    assert (tmp_path / "slow.png").stat().st_size > 0


def _in_a_daemon(queue):
    queue.put(D.can_draw_beside())


def test_a_daemonic_process_draws_here():
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = context.Queue()
    worker = context.Process(target=_in_a_daemon, args=(queue,), daemon=True)
    worker.start()
    assert queue.get(timeout=60) is False
    worker.join(60)


@beside_only
def test_an_analysis_draws_the_same_figures_beside_as_here(tiny_runs, tmp_path, monkeypatch):
    source = tiny_runs(masks=4)
    shutil.copytree(source.path, tmp_path / "runs" / source.path.name)  # analyze writes into its run
    run = open_run(tmp_path / "runs" / source.path.name)
    digests = {}
    for beside in (True, False):
        monkeypatch.setattr(stages, "can_draw_beside", lambda beside=beside: beside)
        report = analyze(run, tmp_path / str(beside), pairs=2, points=3, quiet=True)
        assert set(report.seconds) >= {"figures", "tables", "index"}
        digests[beside] = {name: digest(path) for name, path in report.figures.items()}
        assert all(path.is_file() for path in report.figures.values())
    assert digests[True] == digests[False] and len(digests[True]) >= 8
