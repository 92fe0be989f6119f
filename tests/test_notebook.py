"""The example notebook runs from top to bottom (on a small run), so it never rots."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "mask_landscape.ipynb"


def test_example_notebook_executes(tmp_path, monkeypatch):
    """The tour: the mask table, distances per layer vs chance, consensus, an embedding, an interpolation
    curve and the comparison of two runs, each a DataFrame and then a figure."""
    monkeypatch.setenv("MASKLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MASKLAB_NB_MASKS", "4")
    monkeypatch.setenv("MASKLAB_NB_EPOCHS", "2")
    monkeypatch.setenv("MASKLAB_NB_POINTS", "5")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if "IProgress" in o.get("text", "")]  # tqdm.auto without ipywidgets
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # per layer, heatmap, consensus, embedding, interpolation, joint embedding
    tables = [o.get("data", {}).get("text/html", "") for o in outputs]
    for column in ("mask_id", "z_vs_chance", "kept_by_all", "test_acc", "loss_barrier", "within A"):
        assert any(column in html for html in tables), f"no DataFrame with {column}"
    assert len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 2  # the run and the one it is compared with


def test_progress_bars_are_plain_tqdm_in_a_notebook_too():
    """tqdm.auto (and tqdm.notebook) print a red 'IProgress not found' warning in a notebook without ipywidgets,
    which masklab does not install: every bar is tqdm's plain one, which a notebook shows as text."""
    package = Path(__file__).resolve().parents[1] / "masklab"
    imports = [f"{how} tqdm.{kind}" for how in ("from", "import") for kind in ("auto", "notebook")]
    users = [str(p.relative_to(package)) for p in package.rglob("*.py") if any(i in p.read_text() for i in imports)]
    assert not users
