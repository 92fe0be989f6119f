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
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 6  # per layer, heatmap, consensus, embedding, interpolation, joint embedding
    tables = [o.get("data", {}).get("text/html", "") for o in outputs]
    for column in ("mask_id", "z_vs_chance", "kept_by_all", "test_acc", "loss_barrier", "within A"):
        assert any(column in html for html in tables), f"no DataFrame with {column}"
    assert len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 2  # the run and the one it is compared with
