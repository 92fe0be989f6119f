"""The public Python interface (masklab/__init__.py, docs/design.md): what `dir(masklab)` shows, and one
shape per function with the same defaults in the command line and the API."""

from __future__ import annotations

import inspect
import subprocess
import sys

import masklab
from masklab.cli import build_parser


def test_dir_shows_only_the_api_and_every_name_loads():
    names = dir(masklab)
    assert names == sorted(masklab.__all__)
    assert not {"importlib", "os", "annotations", "_LAZY"} & set(names)
    code = "import masklab; [getattr(masklab, name) for name in dir(masklab)]"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_the_cli_metric_default_is_the_api_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    distances = sub.choices["distances"]
    cli_default = next(a.default for a in distances._actions if a.dest == "metric")
    assert cli_default == inspect.signature(masklab.distances).parameters["metric"].default == "hamming"


def test_no_plot_shares_a_name_with_an_analysis():
    import masklab.analysis
    import masklab.analysis.trajectories
    import masklab.plots

    analyses = set(masklab.analysis.__all__) | {"trajectories", "settling"}
    assert not analyses & set(masklab.plots.__all__)
