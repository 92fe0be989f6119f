"""The one writer (masklab/files.py): whole or not at all, never through a link, never inside a run (but its
analysis/ folder), the path in every error; and no other module of masklab writes a file."""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import masklab
from masklab import files as W
from masklab.cli import main
from masklab.errors import StoreError, WriteError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (3 masks) for the commands that write outputs."""
    return masklab.generate(runs_dir=tmp_path_factory.mktemp("runs"), masks=3, epochs=1, width=0.25)


@pytest.fixture
def outside(tmp_path):
    """A directory outside the "run" with a file in it, and a function giving its files' bytes."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "precious").write_bytes(b"do not touch\n")
    return out, lambda: {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("masklab: error: "), err
    return err[0]


# ---- the writer ------------------------------------------------------------------------------------------
def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    W.atomic_write_json(path, {"a": 1, "layers": [{"x": 1}, {"x": 2}], "files": {"p": {"bytes": 3}}})
    W.atomic_write_json(path, {"a": 2, "layers": [{"x": 1}], "files": {"p": {"bytes": 3}}})
    assert json.loads(path.read_text()) == {"a": 2, "layers": [{"x": 1}], "files": {"p": {"bytes": 3}}}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), W.writing(path) as f:
        f.write(b"half")
        raise RuntimeError("the computation failed half-way")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_remove_tmp_files(tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / ".000001.mask.tmp-123-abcd").write_bytes(b"partial")
    (tmp_path / "masks" / "000000.mask").write_bytes(b"keep")
    assert W.remove_tmp_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["000000.mask"]


def test_tables_and_memory_mapped_arrays_round_trip(tmp_path):
    table = pd.DataFrame({"mask_a": [0, 0, 1], "value": [0.5, 0.25, 1.0], "layer": ["all", "fc1", "all"]})
    for name in ("t.csv", "t.parquet"):
        W.write_table(tmp_path / name, table)
    assert pd.read_csv(tmp_path / "t.csv").equals(table) and pd.read_parquet(tmp_path / "t.parquet").equals(table)
    with W.atomic_npy(tmp_path / "m.npy", np.float64, (2, 3, 3)) as m:
        m[:] = np.arange(18).reshape(2, 3, 3)
        assert not (tmp_path / "m.npy").exists()  # renamed into place at the end only
    assert np.array_equal(np.load(tmp_path / "m.npy"), np.arange(18).reshape(2, 3, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npy", "t.csv", "t.parquet"]


def test_atomic_write_refuses_a_link_and_leaves_its_target_untouched(tmp_path, outside):
    out, contents = outside
    run = tmp_path / "run"
    run.mkdir()
    before = contents()
    (run / "run.json").symlink_to(out / "precious")
    with pytest.raises(StoreError, match=rf"refusing to write {run / 'run.json'}: it is a symbolic link"):
        W.atomic_write(run / "run.json", b"{}", root=run, in_run=True)
    (run / "extras").symlink_to(out)
    with pytest.raises(StoreError, match=rf"{run / 'extras'} is a symbolic link, .*with a real directory"):
        W.atomic_write(run / "extras" / "000000.history.csv", b"x", root=run, in_run=True)
    with pytest.raises(StoreError, match="is a symbolic link"):
        W.make_dirs(run / "extras" / "deeper", root=run, in_run=True)
    assert contents() == before  # nothing written there, not even a temporary file
    assert sorted(p.name for p in run.iterdir()) == ["extras", "run.json"]


def test_make_dirs_refuses_a_file_on_the_way(tmp_path):
    (tmp_path / "analysis").write_text("a file")
    with pytest.raises(StoreError, match=r"analysis is not a directory|exists and is not a directory"):
        W.make_dirs(tmp_path / "analysis" / "x", root=tmp_path)
    assert W.make_dirs(tmp_path / "a" / "b", root=tmp_path).is_dir()


def test_outputs_stay_out_of_every_run_but_its_analysis_folder(tmp_path):
    run = tmp_path / "runs" / "r-0123abcd"
    (run / "masks").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    bare = tmp_path / "runs" / "damaged"  # a run whose run.json is gone is still a run
    (bare / "masks").mkdir(parents=True)
    (bare / "config.toml").write_text("")
    for target in (run / "run.json", run / "masks" / "000001.mask", run / "new.txt", bare / "masks" / "x",
                   run / "masks" / "deeper" / "x", run / "analysis" / ".." / "run.json"):
        with pytest.raises(StoreError, match="is inside the run directory"):
            W.atomic_write(target, b"x")
    (tmp_path / "into").symlink_to(run / "masks")  # a link elsewhere that leads into a run
    with pytest.raises(StoreError, match=f"inside the run directory {run}"):
        W.atomic_write(tmp_path / "into" / "x.npy", b"x")
    W.make_dirs(run / "analysis", root=run)
    W.atomic_write(run / "analysis" / "d.csv", b"x")  # a run's derived tables may go there
    (tmp_path / "elsewhere").mkdir()
    (run / "analysis" / "d.csv").unlink()
    (run / "analysis").rmdir()
    (run / "analysis").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match=rf"{run / 'analysis'} is a symbolic link"):
        W.atomic_write(run / "analysis" / "d.csv", b"x")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert sorted(p.name for p in run.rglob("*")) == ["analysis", "masks", "run.json"]
    W.atomic_write(tmp_path / "runs" / "beside.csv", b"x")  # beside runs is no run


# ---- faults of the environment ----------------------------------------------------------------------------
def test_a_full_disk_is_a_write_error_naming_the_path_and_the_remedy(tmp_path, monkeypatch):
    path = tmp_path / "000001.mask"
    path.write_bytes(b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(WriteError, match=rf"cannot write {path}: No space left on device; free space on that file "
                       "system, then rerun") as err:
        W.atomic_write(path, b"new")
    assert err.value.errno == errno.ENOSPC and err.value.path == path
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["000001.mask"]


def test_a_read_only_directory_is_a_write_error(tmp_path, read_only):
    from masklab.store.lock import RunLock

    (tmp_path / "ro").mkdir()
    read_only(tmp_path / "ro")  # as chmod 0o555 does, for root too
    with pytest.raises(WriteError, match=r"cannot write .*ro/x: Permission denied; you may not write there"):
        W.atomic_write(tmp_path / "ro" / "x", b"x")
    with pytest.raises(WriteError, match="Permission denied"):
        RunLock(tmp_path / "ro" / "lock").acquire()
    assert list((tmp_path / "ro").iterdir()) == []


# ---- through the commands: `masklab distances` (issue 22, item 1) ---------------------------------------------
@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_distances_never_writes_through_a_linked_output_file(run, tmp_path, outside, capsys, suffix):
    out, contents = outside
    before = contents()
    link = tmp_path / f"d{suffix}"
    link.symlink_to(out / "precious")  # today the link's target was overwritten
    assert main(["distances", str(run.path), "--out", str(link), "--quiet"]) == 2
    assert f"refusing to write {link}: it is a symbolic link" in _error_line(capsys)
    assert contents() == before and link.is_symlink()


def test_distances_never_writes_through_a_linked_analysis_folder_or_file(run, tmp_path, outside, capsys):
    out, contents = outside
    before = contents()
    analysis = run.path / "analysis"
    assert not os.path.lexists(analysis)
    try:
        analysis.symlink_to(out)  # today `masklab distances RUN` wrote its table into `outside`
        assert main(["distances", str(run.path), "--metric", "hamming_norm", "--quiet"]) == 2
        line = _error_line(capsys)
        assert f"refusing to write {analysis}" in line and "symbolic link" in line
        assert contents() == before
        analysis.unlink()
        analysis.mkdir()
        (analysis / "distances-hamming_norm.parquet").symlink_to(out / "precious")
        assert main(["distances", str(run.path), "--metric", "hamming_norm", "--quiet"]) == 2
        assert "distances-hamming_norm.parquet: it is a symbolic link" in _error_line(capsys)
        assert contents() == before
        (analysis / "distances-hamming_norm.parquet").unlink()
        # the real folder is written as before
        assert main(["distances", str(run.path), "--metric", "hamming_norm", "--quiet"]) == 0
        assert len(pd.read_parquet(analysis / "distances-hamming_norm.parquet")) == 3
    finally:
        if analysis.is_symlink() or analysis.is_file():
            analysis.unlink()


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_distances_on_a_full_disk_leaves_no_file_and_names_the_path(run, tmp_path, suffix):
    """The file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes every write past 100 bytes fail with EFBIG,
    as a full disk fails with ENOSPC: today a 0-byte (or partial) file was left, and the message named no path."""
    target = tmp_path / "out" / f"d{suffix}"
    target.parent.mkdir()
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "from masklab.cli import main\n"
              f"sys.exit(main(['distances', {str(run.path)!r}, '--out', {str(target)!r}, '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"masklab: error: cannot write {target}: File too large"), err
    assert list(target.parent.iterdir()) == []  # no file, not even a temporary one


# ---- one writer: no other module opens a file for writing --------------------------------------------------
# Calls that write to a path (their first argument) unless that argument is an in-memory buffer (io.BytesIO).
TO_PATH = {"save", "savez", "savez_compressed", "to_csv", "to_parquet", "to_json", "to_pickle", "to_feather",
           "to_hdf", "to_excel", "savefig", "dump", "open_memmap", "tofile"}
# Calls that write (or create, copy, link) whatever their arguments are.
ALWAYS = {"write_text", "write_bytes", "touch", "mkdir", "makedirs", "symlink_to", "hardlink_to",
          "pwrite", "ftruncate", "truncate", "copy2", "copyfile", "copytree", "mkstemp", "mkdtemp",
          "NamedTemporaryFile", "TemporaryDirectory"}
SHUTIL = {"copy", "move"}  # only as shutil's (dict.copy, DataFrame.copy, a model's move are no writes)
OS = {"link", "symlink"}  # only as os's (a page's link(name) formats HTML)
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}


def _buffers(function: ast.AST) -> set[str]:
    """Names assigned an io.BytesIO() / io.StringIO() in `function`."""
    names = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            callee = node.value.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            if name in ("BytesIO", "StringIO"):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _mode(call: ast.Call) -> str:
    """The mode string of an open / fdopen / memmap call: its `mode=` or a positional string that looks like one."""
    for value in [kw.value for kw in call.keywords if kw.arg == "mode"] + call.args[:3]:
        if isinstance(value, ast.Constant) and isinstance(value.value, str) and \
                re.fullmatch(r"[rwxabtU+]{1,4}", value.value):
            return value.value
    return ""


def writes_outside_the_writer(source: str) -> list[tuple[int, str]]:
    """(line, call) of every write in `source` (a module's text) that does not go through masklab.files."""
    tree = ast.parse(source)
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
    found = {}
    for scope in scopes:
        buffers = _buffers(scope)
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call):
                continue
            callee = node.func
            name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
            owner = callee.value.id if isinstance(callee, ast.Attribute) and isinstance(callee.value, ast.Name) \
                else ""
            first = node.args[0] if node.args else None
            bad = False
            if name in ALWAYS or (name in SHUTIL and owner == "shutil") or (name in OS and owner == "os"):
                bad = True
            elif name == "open" and owner == "os":
                devnull = isinstance(first, ast.Attribute) and first.attr == "devnull"
                flags = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                bad = not devnull and bool(flags & WRITE_FLAGS)
            elif name in ("open", "fdopen"):
                bad = any(c in _mode(node) for c in "wax+")
            elif name == "memmap":
                bad = any(c in _mode(node) for c in "w+")
            elif name == "write" and owner == "os":
                bad = True
            elif name in TO_PATH:
                if name == "dump" or (name == "save" and owner == "torch"):  # json.dump, torch.save(obj, file)
                    first = node.args[1] if len(node.args) > 1 else None
                in_memory = (isinstance(first, ast.Name) and first.id in buffers) or \
                    (isinstance(first, ast.Call) and getattr(first.func, "attr", getattr(first.func, "id", ""))
                     in ("BytesIO", "StringIO"))
                bad = first is not None and not in_memory
                if name in ("to_csv", "to_json") and first is None:
                    bad = False  # returns the text
            if bad:
                found[node.lineno] = ast.unparse(node)[:80]
    return sorted(found.items())


def test_the_write_detector_finds_each_kind_of_write():
    source = ("import io, os, shutil\nimport numpy as np\n"
              "def f(path, frame, fig, torch):\n"
              "    open(path, 'w')\n    open(path, mode='ab')\n    path.open('w')\n    path.write_text('x')\n"
              "    path.write_bytes(b'x')\n    np.save(path, 1)\n    np.savez(path, a=1)\n    frame.to_csv(path)\n"
              "    frame.to_parquet(path)\n    fig.savefig(path)\n    torch.save({}, path)\n"
              "    os.open(path, os.O_WRONLY | os.O_CREAT)\n    shutil.copy(path, path)\n    path.mkdir()\n"
              "    np.memmap(path, 'u8', 'w+')\n    np.lib.format.open_memmap(path, mode='w+')\n"
              "def g(path, frame, fig):\n"
              "    buffer = io.BytesIO()\n    np.save(buffer, 1)\n    fig.savefig(buffer)\n"
              "    frame.to_parquet(buffer)\n"
              "    open(path)\n    open(path, 'rb')\n    os.open(path, os.O_RDONLY)\n    frame.to_csv(index=False)\n"
              "    np.memmap(path, 'u8', 'r')\n    frame.copy()\n")
    assert [line for line, _ in writes_outside_the_writer(source)] == list(range(4, 20))


def test_no_module_but_masklab_files_writes_a_file():
    writer = REPO / "masklab" / "files.py"
    found = {}
    for path in sorted((REPO / "masklab").rglob("*.py")):
        if path != writer:
            for line, call in writes_outside_the_writer(path.read_text()):
                found[f"{path.relative_to(REPO)}:{line}"] = call
    assert found == {}, "write through masklab.files (whole or not at all, never through a link): " + \
        json.dumps(found, indent=1)


def test_a_relative_path_inside_an_absolute_root_is_checked_not_refused(tmp_path, monkeypatch):
    """`make demo` writes runs/<id>/analysis (relative) under the run's absolute path: the same place."""
    from masklab.files import check_no_links

    (tmp_path / "runs" / "r").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    check_no_links(Path("runs/r/analysis/x.csv"), tmp_path / "runs" / "r")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "r" / "analysis").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="link"):
        check_no_links(Path("runs/r/analysis/x.csv"), tmp_path / "runs" / "r")
