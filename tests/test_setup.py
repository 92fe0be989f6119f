"""Set-up and packaging: the install, `make clean`, `make notebook`, scripts/demo.sh and scripts/setup-env.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (which would put the checkout first and hide what the install does)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def _tracked() -> list[str]:
    result = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True)
    if result.returncode != 0 or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    return result.stdout.splitlines()


# ---- import masklab from the folder that holds the clone ---------------------------------------------------
IMPORT_CHECK = "import masklab; masklab.open_run; print(masklab.__file__)"


def _parent_of_a_clone(tmp_path: Path) -> Path:
    """A folder holding the clone under the name `masklab`, like ~ holding ~/masklab."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "masklab").symlink_to(REPO, target_is_directory=True)
    return home


BUILD_EDITABLE = """
import sys
from setuptools import build_meta
print(build_meta.build_editable(sys.argv[1]))
"""


@pytest.mark.timeout(300)
def test_an_editable_install_of_the_checkout_is_found_from_the_folder_that_holds_the_clone(tmp_path):
    """What scripts/setup-env.sh installs (`pip install -e .`), rebuilt here by setuptools' PEP 660 hook and
    unpacked into a scratch site directory (pip is not used: it would uninstall the environment's own
    masklab): from ~ with the clone at ~/masklab, `import masklab` must find the package, not the clone's
    root as an empty namespace package (which the import hook of setuptools' default editable mode, appended
    to sys.meta_path, lets through)."""
    pytest.importorskip("setuptools", minversion="77")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    result = subprocess.run([sys.executable, "-c", BUILD_EDITABLE, str(wheels)], cwd=REPO, capture_output=True,
                            text=True, env=_env(), timeout=240)
    assert result.returncode == 0, result.stderr
    site_dir = tmp_path / "site"
    with zipfile.ZipFile(wheels / result.stdout.strip().splitlines()[-1]) as wheel:
        wheel.extractall(site_dir)
    (pth,) = site_dir.glob("__editable__*masklab*.pth")
    assert pth.read_text().splitlines() == [str(REPO)]  # a path entry, not an import hook
    # -S, then the scratch site first and the environment's after it (for numpy, torch, ...): the environment's
    # own install of masklab (another checkout, perhaps) must not be what this test finds.
    code = (f"import site; site.addsitedir({str(site_dir)!r}); "
            f"[site.addsitedir(p) for p in {site_packages()!r}]; {IMPORT_CHECK}")
    home = _parent_of_a_clone(tmp_path)
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=home, capture_output=True, text=True,
                            env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO / "masklab" / "__init__.py")


def _plain_make_env() -> dict:
    """The environment without the variables a parent `make` sets (the tests run under `make test`, and a
    nested make would print "Entering directory" lines)."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def site_packages() -> list[str]:
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _installed_from() -> Path | None:
    """The checkout the environment's masklab is an editable install of (None: not one)."""
    # the checkout's own masklab.egg-info (on sys.path through the editable install) has no direct_url.json:
    # look at every distribution of that name for the installed one
    for dist in metadata.distributions(name="masklab"):
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            return Path(url.removeprefix("file://")).resolve()
    return None


def test_the_environment_finds_masklab_from_the_folder_that_holds_the_clone(tmp_path):
    """The README's snippet from ~ with the clone at ~/masklab, in the environment scripts/setup-env.sh made."""
    if _installed_from() != REPO:
        pytest.skip(f"the environment's masklab is installed from {_installed_from()}, not this checkout")
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=_parent_of_a_clone(tmp_path),
                            capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, (f"{result.stderr.strip().splitlines()[-1:]}: the environment predates the "
                                    "static editable install; re-run `bash scripts/setup-env.sh`")
    assert result.stdout.strip() == str(REPO / "masklab" / "__init__.py")


# ---- versions -----------------------------------------------------------------------------------------------
def test_python_311_is_required_everywhere_it_is_stated():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"  # masklab.config imports tomllib
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert "Python >= 3.11" in (REPO / "README.md").read_text()


# ---- make clean ---------------------------------------------------------------------------------------------
def _replica(tmp_path: Path, git: bool) -> Path:
    """The checkout's tracked paths as empty files (Makefile and .gitignore real), optionally committed."""
    root = tmp_path / "repo"
    for name in _tracked():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in ("Makefile", ".gitignore"):
            shutil.copyfile(REPO / name, path)
        else:
            path.touch()
    if git:
        commit = ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"]
        for args in (["init", "-q"], ["add", "-A"], commit):
            subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


UNTRACKED = [".venv/bin/python", ".venv-min/bin/python", "runs/digits-mlp-edge-popup-s0.5-12345678/masks/000000.mask",
             "figures/digits-mlp-edge-popup-s0.5-12345678/index.html", "figures/stray.png",
             "figures/fashion-mnist/regenerated-not-committed.png"]


@pytest.mark.parametrize("git", [True, False], ids=["git-checkout", "no-git"])
def test_make_clean_keeps_every_tracked_file(tmp_path, git):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = _replica(tmp_path, git)
    tracked = _tracked()
    assert "figures/README.md" in tracked and sum(p.startswith("figures/fashion-mnist/") for p in tracked) > 50
    for name in UNTRACKED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    dry = subprocess.run(["make", "-n", "clean"], cwd=root, capture_output=True, text=True, check=True,
                         env=_plain_make_env()).stdout
    assert "figures/*" not in dry and "runs/*" not in dry
    subprocess.run(["make", "clean"], cwd=root, capture_output=True, text=True, check=True, env=_plain_make_env())
    assert [name for name in tracked if not (root / name).exists()] == []
    study_copy = "figures/fashion-mnist/regenerated-not-committed.png"
    assert [name for name in UNTRACKED if (root / name).exists()] == ([] if git else [study_copy])
    assert not (root / ".venv").exists()
    if git:
        status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=root, capture_output=True,
                                text=True, check=True).stdout
        assert status == ""


# ---- make notebook ------------------------------------------------------------------------------------------
def test_the_notebook_extra_is_installed_only_by_make_notebook(tmp_path):
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("jupyterlab") for req in extras["notebook"])
    assert not any(req.startswith(("jupyterlab", "notebook")) for req in extras["dev"])  # CI installs dev only
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = _replica(tmp_path, git=False)
    dry = subprocess.run(["make", "-n", "notebook"], cwd=root, capture_output=True, text=True, check=True,
                         env=_plain_make_env()).stdout
    lines = dry.splitlines()
    assert lines[-2:] == ["bash scripts/setup-env.sh --notebook", ".venv/bin/jupyter lab examples/"]
    assert "--notebook" not in subprocess.run(["make", "-n", "test"], cwd=root, capture_output=True, text=True,
                                              env=_plain_make_env(),
                                              check=True).stdout


# ---- scripts/demo.sh ----------------------------------------------------------------------------------------
FAKE_MASKLAB = """#!/usr/bin/env bash
case "$1" in
  generate) for i in $(seq 1 300); do echo "generate line $i"; done; echo "progress bar" >&2
            [ -n "${FAIL:-}" ] && exit 2; echo "runs/fake-run";;
  analyze) echo "analyze of $2"; for i in $(seq 1 300); do echo "analyze line $i"; done
           echo "figures/fake-run/index.html";;
esac
"""


def _demo(tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """scripts/demo.sh with a fake masklab, its stdout and stderr redirected to one log as `> log 2>&1` does."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copyfile(REPO / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    fake = tmp_path / "masklab"
    fake.write_text(FAKE_MASKLAB)
    fake.chmod(0o755)
    log = tmp_path / "log"
    with open(log, "w") as f:  # O_TRUNC without O_APPEND, as the shell's `>`
        code = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), "--masks", "4"], stdout=f, stderr=f,
                              env=_env(MASKLAB=str(fake), **env), timeout=60).returncode
    return code, log.read_text().splitlines()


def test_demo_keeps_a_redirected_log_whole(tmp_path):
    code, lines = _demo(tmp_path)
    assert code == 0, lines[-5:]
    body = [line for line in lines if line.startswith(("generate line", "analyze line"))]
    assert body == [f"generate line {i}" for i in range(1, 301)] + [f"analyze line {i}" for i in range(1, 301)]
    assert lines.count("runs/fake-run") == 1 and "analyze of runs/fake-run" in lines and "progress bar" in lines
    assert lines[-3:] == [lines[-3], "run:     runs/fake-run", "figures: figures/fake-run/index.html"]
    assert lines[-3].startswith("generate: ") and " s, analyze: " in lines[-3]


def test_demo_stops_when_generate_fails(tmp_path):
    code, lines = _demo(tmp_path, FAIL="1")
    assert code != 0
    assert not any(line.startswith(("analyze", "figures:")) for line in lines)


# ---- scripts/setup-env.sh -----------------------------------------------------------------------------------
FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in for .venv/bin/python: torch is "installed"; pip prints what a real install prints.
if [ "$1" = "-c" ]; then echo "2.13.0+cpu"; exit 0; fi
if [ "$1 $2" = "-m masklab.warm" ]; then echo "warm $*" >> "$(dirname "$0")/../calls"; exit 0; fi
if [ "$1 $2 $3" = "-m pip install" ]; then
  echo "pip $*" >> "$(dirname "$0")/../calls"
  case " $* " in *" -q "*) exit 0;; esac
  echo "Obtaining file:///repo"
  echo "Collecting numpy>=2.0 (from masklab==0.1.0)"
  echo "  Downloading numpy-2.3.0.whl (16.6 MB)"
  echo "Collecting scipy>=1.10 (from masklab==0.1.0)"
  echo "Installing collected packages: numpy, scipy, masklab"
  [ -n "${FAIL:-}" ] && { echo "ERROR: no space left on device"; exit 1; }
  echo "Successfully installed masklab-0.1.0 numpy-2.3.0 scipy-1.16.0"
  exit 0
fi
exit 3
"""


def _setup(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    root = tmp_path / "repo"
    if not root.exists():
        (root / "scripts").mkdir(parents=True)
        (root / ".venv" / "bin").mkdir(parents=True)
        shutil.copyfile(REPO / "scripts" / "setup-env.sh", root / "scripts" / "setup-env.sh")
        shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
        (root / ".venv" / "bin" / "python").write_text(FAKE_PYTHON)
        (root / ".venv" / "bin" / "python").chmod(0o755)
    return subprocess.run(["bash", str(root / "scripts" / "setup-env.sh"), *args], capture_output=True, text=True,
                          env=_env(**env), timeout=60)


def test_setup_prints_what_it_installs_and_is_quiet_when_done(tmp_path):
    result = _setup(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.rsplit(" (", 1)[0] if line.endswith(" s)") else line for line in result.stderr.splitlines()]
    assert lines[0] == "setup: upgrading pip"
    assert lines[1] == "setup: keeping the installed PyTorch 2.13.0+cpu"
    assert lines[2].startswith("setup: installing masklab (editable, .[dev]) and its dependencies: numpy, scipy")
    assert lines[3:6] == ["setup:   numpy>=2.0 (from masklab==0.1.0)", "setup:   scipy>=1.10 (from masklab==0.1.0)",
                          "setup:   Installing collected packages: numpy, scipy, masklab"]
    assert lines[6].startswith("setup: warming numba's caches")
    assert lines[7] == "setup: done: .venv is ready" and len(lines) == 8
    calls = (tmp_path / "repo" / ".venv" / "calls").read_text().splitlines()
    assert calls[-2].endswith('install --progress-bar off -e .[dev]')
    assert calls[-1] == "warm -m masklab.warm --quiet"  # numba's caches filled once, at set-up
    assert "Successfully installed" in (tmp_path / "repo" / ".venv" / "setup-pip.log").read_text()
    again = _setup(tmp_path)  # stamped: nothing to do, nothing printed
    assert again.returncode == 0 and again.stderr == ""
    notebook = _setup(tmp_path, "--notebook")
    assert notebook.returncode == 0 and "(editable, .[dev,notebook])" in notebook.stderr and "jupyterlab" in \
        notebook.stderr
    assert _setup(tmp_path, "--notebook").stderr == "" and _setup(tmp_path).stderr == ""


def test_setup_shows_the_end_of_pips_log_when_pip_fails(tmp_path):
    result = _setup(tmp_path, FAIL="1")
    assert result.returncode == 1
    assert "setup: pip install -e .[dev] failed; the end of .venv/setup-pip.log:" in result.stderr
    assert result.stderr.rstrip().endswith("ERROR: no space left on device")
    assert not (tmp_path / "repo" / ".venv" / ".masklab-stamp").exists()
