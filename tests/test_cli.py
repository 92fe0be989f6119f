"""The `masklab` command line (in process): generate, runs, show; bad input is one line and exit code 2."""

from __future__ import annotations

import shutil

import pytest

import masklab
from masklab import cli
from masklab.cli import main
from masklab.config import RunConfig

TINY = ["--masks", "2", "--epochs", "1", "--width", "0.25"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny run made through the command line: (runs dir, stdout)."""
    runs = tmp_path_factory.mktemp("cli") / "runs"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", *TINY, "--runs-dir", str(runs)]) == 0
    return runs, out.getvalue()


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("masklab: error: ") and "Traceback" not in captured.err
    return captured.err


# ---- generate, runs, show ---------------------------------------------------------------------------------
def test_generate_prints_a_banner_and_ends_with_the_run_directory(made):
    runs, out = made
    lines = out.strip().splitlines()
    config = RunConfig(masks=2, epochs=1, width=0.25)
    assert lines[0].startswith(f"run {config.run_id}: 2 masks, digits mlp edge-popup sparsity 0.5")
    assert lines[1] == "config: width=0.25, epochs=1, masks=2"
    assert lines[-2].startswith("2 masks: test accuracy mean ")
    assert lines[-1] == str(runs / config.run_id)
    assert masklab.open_run(lines[-1]).ids == [0, 1]


def test_generate_twice_reports_the_complete_run(made, capsys):
    runs, _ = made
    assert main(["generate", *TINY, "--runs-dir", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [str(runs / RunConfig(masks=2, epochs=1, width=0.25).run_id)]


def test_runs_lists_the_run(made, capsys):
    runs, _ = made
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run_id", "model", "dataset", "method", "sparsity", "epochs", "masks", "test_acc"]
    assert out[1].split()[:7] == [RunConfig(masks=2, epochs=1, width=0.25).run_id, "mlp", "digits", "edge-popup",
                                  "0.5000", "1", "2"]


def test_runs_on_an_empty_directory(in_tmp, capsys):
    assert main(["runs"]) == 0
    assert "no runs under runs" in capsys.readouterr().out


def test_show_by_id_and_by_path(made, capsys):
    runs, _ = made
    run_id = RunConfig(masks=2, epochs=1, width=0.25).run_id
    assert main(["show", run_id, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    for needle in [run_id, "config (fields not at their default", "* width = 0.25", "masks:", "layers:",
                   "word_start", "test_acc"]:
        assert needle in out
    assert main(["show", str(runs / run_id)]) == 0
    assert capsys.readouterr().out == out
    assert main(["show", run_id, "--runs-dir", str(runs), "--mask", "1"]) == 0
    out = capsys.readouterr().out
    assert "score_seed  1" in out and "history:" in out


@pytest.mark.parametrize("argv, message", [
    (["show", "RUN", "--mask", "9"], "has no mask 9; its mask ids are 0..1"),
    (["show", "nope"], "no run 'nope' under"),
    (["show", "../../no-such-run"], "no run directory ../../no-such-run"),
    (["show", "/etc"], "/etc is not a masklab run directory"),
])
def test_show_errors(made, capsys, argv, message):
    runs, _ = made
    argv = [RunConfig(masks=2, epochs=1, width=0.25).run_id if a == "RUN" else a for a in argv]
    assert main([*argv, "--runs-dir", str(runs)]) == 2
    assert message in _error_line(capsys)


# ---- config file and flags --------------------------------------------------------------------------------
def test_config_file_with_flags_overriding(in_tmp, capsys):
    (in_tmp / "c.toml").write_text("masks = 3\nepochs = 1\nwidth = 0.25\nsparsity = 0.7\n")
    assert main(["generate", "--config", "c.toml", "--masks", "1", "--quiet"]) == 0
    run = masklab.open_run(capsys.readouterr().out.strip())
    assert run.config == RunConfig(masks=1, epochs=1, width=0.25, sparsity=0.7)
    # a run's own config.toml is a valid --config file: it names the same run
    assert main(["generate", "--config", str(run.path / "config.toml"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(run.path)


# ---- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "1.5"], "'sparsity' = 1.5 is invalid"),
    (["--masks", "0"], "'masks' = 0 is invalid"),
    (["--model", "vgg"], "'model' = 'vgg' is invalid: choose one of mlp"),
    (["--dataset", "imagenet"], "'dataset' = 'imagenet' is invalid"),
    (["--dataset", "fashion-mnist", "--data-root", "EMPTY"], "fashion-mnist: no train-images-idx3-ubyte"),
    (["--config", "BAD"], "is not valid TOML"),
    (["--config", "UNKNOWN"], "unknown key 'sparsityy'"),
    (["--config", "missing.toml"], "does not exist"),
    (["--sparsity", "abc"], "argument --sparsity: invalid float value: 'abc'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--name", "../escape"], "'name' = '../escape' is invalid"),
    (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--masks", "-1"], "is"),
])
def test_bad_generate_input_is_one_line_exit_2_and_leaves_nothing(in_tmp, capsys, argv, message):
    (in_tmp / "EMPTY").mkdir()
    (in_tmp / "BAD").write_text("masks = [\n")
    (in_tmp / "UNKNOWN").write_text("sparsityy = 0.5\n")
    assert main(["generate", *argv]) == 2
    assert message in _error_line(capsys)
    assert not (in_tmp / "runs").exists()
    assert capsys.readouterr().out == ""


def test_resume_into_a_directory_of_another_config_is_refused(made, in_tmp, capsys):
    runs, _ = made
    source = runs / RunConfig(masks=2, epochs=1, width=0.25).run_id
    other = RunConfig(masks=2, epochs=1, width=0.25, sparsity=0.9)
    shutil.copytree(source, in_tmp / "runs" / other.run_id)
    assert main(["generate", *TINY, "--sparsity", "0.9", "--resume", "--quiet"]) == 2
    assert "was made by a different config (sparsity: 'default' there, 0.9 here)" in _error_line(capsys)


def test_truncated_mask_file_is_named_by_show(made, in_tmp, capsys):
    runs, _ = made
    path = in_tmp / "copy"
    shutil.copytree(runs / RunConfig(masks=2, epochs=1, width=0.25).run_id, path)
    mask = path / "masks" / "000000.mask"
    mask.write_bytes(mask.read_bytes()[:-3])
    assert main(["show", str(path)]) == 2
    assert f"mask file {mask} is truncated or corrupt" in _error_line(capsys)


def test_no_command_and_help(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in _error_line(capsys)
    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ["--dataset", "--data-root", "--model", "--width", "--method", "--recycle", "--recycle-rate",
                 "--recycle-every", "--sparsity", "--masks", "--epochs", "--batch-size", "--lr", "--weight-seed",
                 "--score-seed", "--data-seed", "--stack", "--device", "--keep-scores", "--snapshot-every",
                 "--runs-dir", "--name", "--resume", "--quiet", "--config", "--vary-data-seed"]:
        assert flag in help_text
    assert "or auto" in " ".join(help_text.split())


def test_an_internal_error_is_exit_1_without_traceback(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_runs", broken)
    assert main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err == "masklab: internal error: RuntimeError: boom (rerun with MASKLAB_DEBUG=1 for the traceback)\n"
    monkeypatch.setenv("MASKLAB_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["runs"])


def test_import_masklab_is_light_and_runs_needs_no_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, masklab; assert not {'torch', 'pandas', 'numpy'} & set(sys.modules); "
            "masklab.open_run; from masklab.cli import main; main(['runs', '--runs-dir', sys.argv[1]]); "
            "assert 'torch' not in sys.modules")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr


# ---- sweep -----------------------------------------------------------------------------------------------------
def test_sweep_prints_the_table_and_ends_with_the_figure(in_tmp, capsys):
    argv = ["sweep", "--methods", "edge-popup,biprop", "--sparsities", "0.5", "--seeds", "1", "--epochs", "1",
            "--width", "0.25"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figure = in_tmp / "figures" / "sweep-digits-mlp.png"
    assert lines[-1] == str(figure.relative_to(in_tmp)) and figure.stat().st_size > 1000
    assert any(line.split()[:2] == ["biprop", "0.5000"] for line in lines)
    table = __import__("pandas").read_csv(figure.with_suffix(".csv"))
    assert sorted(table["method"]) == ["biprop", "edge-popup"] and len(list((in_tmp / "runs").iterdir())) == 2
    assert main([*argv, "--quiet"]) == 0  # the second call reuses both runs and prints only the path
    assert capsys.readouterr().out.strip() == str(figure.relative_to(in_tmp))


@pytest.mark.parametrize("argv,message", [
    (["--methods", "lottery"], "sweep method 'lottery'"),
    (["--sparsities", "half"], "--sparsities 'half' is not a comma-separated list"),
    (["--seeds", "0"], "sweep seeds = 0 is invalid"),
])
def test_bad_sweep_input_is_one_line_exit_2(in_tmp, capsys, argv, message):
    assert main(["sweep", *argv]) == 2
    assert message in _error_line(capsys)
    assert not (in_tmp / "runs").exists()


def test_read_only_commands_end_fast_and_flush_their_output(tmp_path):
    """`masklab runs` (one of the commands that skip the interpreter's teardown) still prints everything."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "masklab", "runs", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().startswith("no runs under")
