"""Figures drawn by the worker process are the files the same call writes in this process, and whatever goes
wrong there is drawn (and raised) here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from masklab import plots as P
from masklab.errors import UserError
from masklab.plots.worker import FigureWriter, figure_paths, stop_worker


def histogram_data():
    rng = np.random.default_rng(0)
    observed = pd.DataFrame({"layer": "all", "metric": "hamming_norm", "value": rng.normal(0.49, 0.01, 66)})
    random = pd.DataFrame({"layer": "all", "metric": "hamming_norm", "value": rng.normal(0.5, 0.01, 66)})
    return observed, random


def test_worker_writes_the_same_bytes_as_this_process(tmp_path):
    observed, random = histogram_data()
    with FigureWriter(parallel=True) as writer:
        assert writer.process is not None
        paths = writer.submit(P.distance_histogram, (observed, random, 0.5), {"metric": "hamming_norm"},
                              tmp_path / "far" / "hist", ("png", "svg"))
        waited, drawn = writer.close()
    assert paths == figure_paths(tmp_path / "far" / "hist", ("png", "svg")) and all(p.exists() for p in paths)
    assert drawn > 0 and waited >= 0
    here = FigureWriter(parallel=False)
    local = here.submit(P.distance_histogram, (observed, random, 0.5), {"metric": "hamming_norm"},
                        tmp_path / "near" / "hist", ("png", "svg"))
    for a, b in zip(paths, local):
        assert a.read_bytes() == b.read_bytes()


def test_a_figure_that_fails_in_the_worker_raises_here(tmp_path):
    writer = FigureWriter(parallel=True)
    writer.submit(P.distance_histogram, (pd.DataFrame({"value": []}),), {}, tmp_path / "empty", ("png",))
    with pytest.raises(UserError, match="the table is empty"):
        writer.close()


def test_a_worker_that_cannot_start_falls_back_to_this_process(tmp_path, monkeypatch):
    import subprocess

    def refuse(*args, **kwargs):
        raise OSError("no processes today")

    stop_worker()
    monkeypatch.setattr(subprocess, "Popen", refuse)
    writer = FigureWriter(parallel=True)
    assert not writer.parallel
    observed, random = histogram_data()
    (path,) = writer.submit(P.distance_histogram, (observed, random), {}, tmp_path / "h", ("png",))
    assert path.exists() and writer.close()[1] == 0.0


def test_the_environment_switches_the_worker_off(monkeypatch):
    from masklab.plots import worker

    monkeypatch.setenv(worker.ENV_SWITCH, "0")
    assert not worker.parallel_default() and not FigureWriter().parallel


def test_the_worker_is_reused_and_restarted_after_it_dies(tmp_path):
    observed, random = histogram_data()
    with FigureWriter(parallel=True) as first:
        pid = first.process.pid
        first.submit(P.distance_histogram, (observed, random), {}, tmp_path / "a", ("png",))
    with FigureWriter(parallel=True) as second:
        assert second.process.pid == pid            # the same worker, already started
        second.process.kill()
        second.process.wait()
        (path,) = second.submit(P.distance_histogram, (observed, random), {}, tmp_path / "b", ("png",))
    assert path.exists()                            # drawn here when the worker was gone
    with FigureWriter(parallel=True) as third:
        assert third.process.pid != pid
        (path,) = third.submit(P.distance_histogram, (observed, random), {}, tmp_path / "c", ("png",))
    assert path.exists()
