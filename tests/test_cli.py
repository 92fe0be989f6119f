"""The `masklab` command line (in process): generate, runs, show; bad input is one line and exit code 2."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import masklab
from masklab import limits
from masklab.cli import main
from masklab.cli import runs as cli_runs
from masklab.cli.text import bytes_text
from masklab.config import RunConfig
from masklab.report.settings import AnalysisSettings
from masklab.store.files import sealed

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
    assert lines[-2].startswith("2 masks: test accuracy mean ") and "%" in lines[-2]
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
    assert out[0].split() == ["run_id", "model", "dataset", "method", "sparsity", "epochs", "lr", "weight", "init",
                              "weight", "seed", "masks", "test_acc"]
    # the values used (method defaults resolved), sparsity in % as every figure has it, epochs an integer
    assert out[1].split()[:10] == [RunConfig(masks=2, epochs=1, width=0.25).run_id, "mlp", "digits", "edge-popup",
                                   "50%", "1", "0.1", "signed-constant", "0", "2"]


def test_one_definition_of_bytes_per_mask(made, capsys):
    """generate, show and the README state the same sizes, from `Run.bytes_per_mask`."""
    runs, out = made
    run = masklab.open_run(runs / RunConfig(masks=2, epochs=1, width=0.25).run_id)
    size = run.bytes_per_mask()
    assert size["mask file"] == 64 + 8 * run.n_words == (run.path / "masks" / "000000.mask").stat().st_size
    extras = run.disk_bytes()["total"].mean()
    assert size["mask with its extras"] == pytest.approx(extras) and extras > size["mask file"]
    text = bytes_text(run)
    assert text == (f"{size['mask file']:,.0f} bytes per mask file, {extras:,.0f} per mask with its record and "
                    "extras")
    assert text in out.strip().splitlines()[-2]  # generate's summary line
    assert main(["show", str(run.path)]) == 0
    assert f"on disk  {text}" in capsys.readouterr().out
    from pathlib import Path

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "A Conv-4 mask file takes 303,192 bytes" in readme  # 2,425,024 bits in 37,891 words + the header
    assert 64 + 8 * 37_891 == 303_192


def test_help_describes_every_argument_and_command(capsys):
    for argv, needles in ((["compare", "--help"], ["RUN_A", "the first run (A)", "RUN_B", "the second run (B)",
                                                   "within A"]),
                          (["runs", "--help"], ["List every run under --runs-dir"])):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (argv, needle)


def test_runs_on_an_empty_directory(in_tmp, capsys):
    assert main(["runs"]) == 0
    assert "no runs under runs" in capsys.readouterr().out


def test_show_by_id_and_by_path(made, capsys):
    runs, _ = made
    run_id = RunConfig(masks=2, epochs=1, width=0.25).run_id
    assert main(["show", run_id, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    for needle in [run_id, "settings (", "masks:", "layers:", "word_start", "test_acc"]:
        assert needle in out
    lines = [" ".join(line.split()) for line in out.splitlines()]
    for line in ["* width 0.25", "* epochs 1", "m lr 0.1", "m weight init signed-constant", "sparsity 50%",
                 "batch size 128", "weight seed 0", "score seeds 0..1", "data seed 0", "method edge-popup"]:
        assert line in lines, line  # the values the run used, not "(all defaults)"
    assert "None" not in out
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
    assert run.config == RunConfig(masks=1, epochs=1, width=0.25, sparsity=0.7).resolve()
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


@pytest.mark.parametrize("argv, message", [
    (["generate", "--sparsty", "0.9"], "unrecognized arguments: --sparsty 0.9 (did you mean --sparsity?) (see "
     "`masklab generate --help`)"),
    (["generate", "--sparsty=0.9", "--mask", "2", "--weigth-seed", "1"],
     "(did you mean --sparsity, --weight-seed?)"),
    (["analyze", "RUN", "--no-embeding"], "(did you mean --no-embedding?) (see `masklab analyze --help`)"),
    (["genrate"], "invalid choice: 'genrate'"),
    (["genrate"], "(did you mean generate?)"),
    (["interpolate", "RUN", "--path", "haming"], "(did you mean hamming?)"),
    (["generate", "--method", "edgepopup"], "choose one of edge-popup, biprop, dense (did you mean edge-popup?)"),
])
def test_a_mistyped_option_command_or_choice_gets_a_suggestion(in_tmp, capsys, argv, message):
    assert main(argv) == 2
    assert message in _error_line(capsys)
    assert not (in_tmp / "runs").exists()


def test_no_suggestion_when_nothing_is_close(in_tmp, capsys):
    from masklab.cli.parser import suggestion

    assert main(["runs", "--zzz"]) == 2
    assert "did you mean" not in _error_line(capsys)
    assert suggestion("the following arguments are required: RUN", ["--sparsity"]) == ""


def _idx(shape: tuple[int, ...], payload: bytes | None = None) -> bytes:
    """An IDX file of unsigned bytes in the real format: magic, big-endian dimensions, the bytes."""
    header = struct.pack(">I", 0x0800 | len(shape)) + b"".join(struct.pack(">I", d) for d in shape)
    return header + (bytes(math.prod(shape)) if payload is None else payload)


def _idx_set(directory, train=(12, 28, 28), train_labels=12, train_payload=None) -> None:
    directory.mkdir()
    (directory / "train-images-idx3-ubyte").write_bytes(_idx(train, train_payload))
    (directory / "train-labels-idx1-ubyte").write_bytes(_idx((train_labels,)))
    (directory / "t10k-images-idx3-ubyte").write_bytes(_idx((5, 28, 28)))
    (directory / "t10k-labels-idx1-ubyte").write_bytes(_idx((5,)))


@pytest.fixture
def bad_inputs(in_tmp, monkeypatch):
    """Degenerate data sets in the real formats, and config paths that are not files."""
    _idx_set(in_tmp / "ZERO", train=(0, 28, 28), train_labels=0)
    _idx_set(in_tmp / "PIXELS", train=(12, 0, 0))
    _idx_set(in_tmp / "OVERFLOW", train=(2**16, 2**24, 2**24), train_payload=b"")  # 2^64 bytes: 0 in int64
    _idx_set(in_tmp / "LABELS", train_labels=11)
    (in_tmp / "CIFAR").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.zeros((2, 3, 32, 32) if name == "data_batch_2" else (2, 3072), np.uint8)
        (in_tmp / "CIFAR" / name).write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}))
    os.mkfifo(in_tmp / "FIFO")
    (in_tmp / "NAN").write_text("width = nan\n")
    monkeypatch.setattr(limits, "memory_bytes", lambda: 2**30)  # 1 GiB, whatever the machine has
    return in_tmp


@pytest.mark.timeout(120)  # a config path read without end would hang here
@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist", "--data-root", "ZERO"], "train-images-idx3-ubyte holds no images"),
    (["--dataset", "mnist", "--data-root", "PIXELS"], "holds images of 0x0 pixels"),
    (["--dataset", "fashion-mnist", "--data-root", "OVERFLOW"], "its header says 65536x16777216x16777216"),
    (["--dataset", "mnist", "--data-root", "LABELS"], "holds 12 images but LABELS/train-labels-idx1-ubyte holds 11"),
    (["--dataset", "cifar10", "--model", "conv2", "--data-root", "CIFAR"],
     "CIFAR/data_batch_2 is not a CIFAR-10 batch: its b'data' is uint8 2x3x32x32"),
    (["--masks", "1000000000"], "'masks' = 1000000000 is invalid: must be an integer >= 1 and at most 1,000,000"),
    (["--dataset", "synthetic", "--input-shape", "1000x1000x1000x1000x1000"],
     "'input_shape' = '1000x1000x1000x1000x1000' is invalid: a sample of 1,000,000,000,000,000 values"),
    (["--dataset", "synthetic", "--input-shape", "1x1000x1000", "--model", "conv4"],
     "has 2,048,326,720 prunable weights, more than the limit of 1,073,741,824"),
    (["--width", "100000"], "more than the limit of 1,073,741,824; use a smaller --width"),
    (["--stack", "100000", "--masks", "100000", "--model", "lenet-300-100"],
     "training 100000 mask(s) at once needs about 372.7 GiB but 1.0 GiB of memory is available; use a smaller --stack"),
    (["--epochs", "1000000000"], "'epochs' = 1000000000 is invalid"),
    (["--batch-size", "100000000000000000000"], "'batch_size' = 100000000000000000000 is invalid"),
    (["--score-seed", "2147483640"], "'score_seed' = 2147483640 is invalid"),
    (["--sparsity", "nan"], "'sparsity' = nan is invalid"),
    (["--lr", "inf"], "'lr' = inf is invalid"),
    (["--config", "NAN"], "'width' = nan is invalid"),
    (["--config", "/dev/zero"], "config file /dev/zero is a character device, not a regular file"),
    (["--config", "FIFO"], "config file FIFO is a FIFO, not a regular file"),
    (["--config", "."], "config file . is a directory, not a regular file"),
])
def test_bad_values_fail_early_name_themselves_and_leave_no_run(bad_inputs, capsys, argv, message):
    assert main(["generate", *argv, "--runs-dir", "runs"]) == 2
    assert message in _error_line(capsys)
    assert not (bad_inputs / "runs").exists()


@pytest.mark.parametrize("argv", [["--lr", "1e10"], ["--method", "dense", "--lr", "1e30"],
                                  ["--method", "biprop", "--lr", "1e12"]])
def test_a_diverging_learning_rate_stops_naming_lr_and_leaves_no_run(in_tmp, capsys, argv):
    assert main(["generate", "--masks", "2", "--epochs", "2", "--width", "0.25", *argv, "--quiet"]) == 2
    line = _error_line(capsys)
    assert "training diverged" in line and "use a smaller --lr" in line and argv[-1].replace("1e", "1e+") in line
    assert list((in_tmp / "runs").iterdir()) == []


def test_negative_zero_sparsity_is_the_same_run_as_zero(in_tmp, capsys):
    argv = ["generate", "--masks", "1", "--epochs", "1", "--width", "0.25", "--quiet"]
    assert main([*argv, "--sparsity", "-0"]) == 0
    first = capsys.readouterr().out.strip()
    assert main([*argv, "--sparsity", "0"]) == 0
    assert capsys.readouterr().out.strip() == first
    assert [p.name for p in (in_tmp / "runs").iterdir() if p.is_dir()] == [  # (beside it: the results catalog)
        RunConfig(sparsity=0, masks=1, epochs=1, width=0.25).run_id]
    assert "-s0-" in first


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


# ---- integrity, links and faults of the environment (the store) ----------------------------------------------
RUN_ID = RunConfig(masks=2, epochs=1, width=0.25).run_id
QUIET_ANALYZE = ["--quiet", "--pairs", "0", "--no-embedding"]


@pytest.fixture
def run_copy(made, in_tmp):
    """A copy of the tiny run under ./runs (the default --runs-dir), to damage."""
    runs, _ = made
    path = in_tmp / "runs" / RUN_ID
    shutil.copytree(runs / RUN_ID, path)
    return path


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["masks.bits", "masks/000001.mask"])
def test_a_flipped_byte_is_refused_by_show_analyze_and_resume(run_copy, capsys, target):
    from masklab.store.cache import words_offset

    _flip(run_copy / target, words_offset(2) + 8 * 140 + 3 if target == "masks.bits" else 64 + 3)
    before = _tree(run_copy)
    for argv in (["show", str(run_copy)], ["analyze", str(run_copy), *QUIET_ANALYZE],
                 ["generate", *TINY, "--resume", "--quiet"], ["generate", "--resume", str(run_copy), "--quiet"]):
        assert main(argv) == 2, argv
        err = _error_line(capsys)
        assert f"{RUN_ID}/{target} " in err and ("is corrupt" in err or "fails its checksum" in err), argv
        assert f"masklab verify {run_copy if argv[1] != '--masks' else 'runs/' + RUN_ID} --repair" in err
    assert _tree(run_copy) == before and not (run_copy / "analysis").exists()


def test_verify_then_repair_then_resume_retrains_exactly_the_quarantined_mask(made, run_copy, capsys):
    runs, _ = made
    assert main(["verify", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip().endswith("all files verified")
    _flip(run_copy / "masks" / "000001.mask", 64 + 100)
    assert main(["verify", RUN_ID]) == 2  # (a run id under ./runs)
    captured = capsys.readouterr()
    assert "problem  masks/000001.mask: mask file" in captured.out
    assert captured.err.count("\n") == 1 and "1 problem(s) remain" in captured.err and "000001.mask" in captured.err
    mask0 = (run_copy / "masks" / "000000.mask").read_bytes()
    assert main(["verify", str(run_copy), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"mask 1 moved to {run_copy / 'quarantine'}; `masklab generate --resume {run_copy}` retrains it" in out
    assert sorted(p.name for p in (run_copy / "masks").iterdir()) == ["000000.json", "000000.mask"]
    assert main(["generate", "--resume", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "resuming: 1 masks stored, training 1 more" in out and out.strip().splitlines()[-1] == str(run_copy)
    assert (run_copy / "masks" / "000000.mask").read_bytes() == mask0
    assert (run_copy / "masks" / "000001.mask").read_bytes() == (runs / RUN_ID / "masks" / "000001.mask").read_bytes()
    assert main(["verify", str(run_copy)]) == 0


@pytest.mark.parametrize("where", ["lock", "extras", "analysis", "figures", "figure"])
def test_a_link_where_masklab_writes_is_refused_and_its_target_untouched(run_copy, in_tmp, capsys, where):
    outside = in_tmp / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me\n")
    figure_dir = in_tmp / "figures" / RUN_ID / AnalysisSettings(pairs=0, embedding=False).id  # QUIET_ANALYZE's
    if where == "lock":
        (run_copy / "lock").unlink()
        (run_copy / "lock").symlink_to(outside / "precious")
        argvs = [["generate", *TINY, "--quiet"], ["generate", *TINY, "--quiet", "--resume"]]  # a complete run
    elif where == "extras":
        shutil.move(run_copy / "extras", outside / "extras")
        (run_copy / "extras").symlink_to(outside / "extras")
        (run_copy / "masks" / "000001.json").unlink()  # mask 1 to train again: its history would go there
        argvs = [["generate", *TINY, "--quiet", "--resume"]]
    elif where == "analysis":
        (run_copy / "analysis").symlink_to(outside)
        argvs = [["analyze", str(run_copy), *QUIET_ANALYZE]]
    elif where == "figures":
        (in_tmp / "figures").mkdir()
        (in_tmp / "figures" / RUN_ID).symlink_to(outside)
        argvs = [["analyze", str(run_copy), *QUIET_ANALYZE]]
    else:  # one figure file, in the folder of this analysis's settings
        figure_dir.mkdir(parents=True)
        (figure_dir / "per_layer_similarity.png").symlink_to(outside / "precious")
        argvs = [["analyze", str(run_copy), *QUIET_ANALYZE]]
    before = _tree(outside)
    link = {"figures": in_tmp / "figures" / RUN_ID,
            "figure": figure_dir / "per_layer_similarity.png"}.get(where, run_copy / where)
    for argv in argvs:
        assert main(argv) == 2, argv
        err = _error_line(capsys)
        assert f"refusing to write {link.relative_to(in_tmp)}" in err.replace(f"{in_tmp}/", ""), argv
        assert "is a symbolic link, and masklab never writes through links" in err
    assert _tree(outside) == before  # today: the lock's target truncated, the history and the tables written there


@pytest.mark.parametrize("damage, message", [
    ("config", "config.toml was edited after the run was made (sparsity: 0.9 in config.toml, 'default' in run.json)"),
    ("record", "masks/000001.json lacks the field 'checksum'"),
])
def test_an_edited_config_or_an_incomplete_record_is_named_exit_2(run_copy, capsys, damage, message):
    import json

    if damage == "config":
        config = run_copy / "config.toml"
        config.write_text(config.read_text().replace("sparsity = 0.5", "sparsity = 0.9"))
    else:
        record = run_copy / "masks" / "000001.json"
        value = json.loads(record.read_text())
        del value["checksum"]
        record.write_text(json.dumps(sealed(value)))
    for argv in (["show", str(run_copy)], ["analyze", str(run_copy), *QUIET_ANALYZE],
                 ["generate", "--resume", str(run_copy), "--quiet"], ["verify", str(run_copy)]):
        assert main(argv) == 2, argv
        err = _error_line(capsys)
        assert f"{run_copy}/{message}" in err, argv  # today: analyze exits 1 with KeyError: 'checksum'


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell which file is written")
def test_a_full_disk_while_writing_a_mask_exits_2_and_leaves_no_partial_mask(made, in_tmp, capsys, monkeypatch):
    import errno

    runs, _ = made
    real = os.write

    def write(fd, data):
        if "000001.mask" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert main(["generate", *TINY, "--quiet"]) == 2
    path = in_tmp / "runs" / RUN_ID
    err = _error_line(capsys)
    assert f"cannot write runs/{RUN_ID}/masks/000001.mask: No space left on device; free space" in err
    assert "--resume" in err
    monkeypatch.setattr(os, "write", real)  # space freed
    assert masklab.open_run(path).ids == [0]
    assert not [p for p in path.rglob("*000001*")]  # no record, no mask file, no extras, no temporary file
    assert main(["generate", *TINY, "--quiet", "--resume"]) == 0  # and resume finishes the run
    assert [p.read_bytes() for p in sorted(path.glob("masks/*.mask"))] == \
        [p.read_bytes() for p in sorted((runs / RUN_ID).glob("masks/*.mask"))]


def test_a_runs_dir_that_is_a_file_or_an_unwritable_figures_dir_exits_2(run_copy, in_tmp, capsys, monkeypatch):
    (in_tmp / "plain").write_text("a file")
    assert main(["generate", *TINY, "--quiet", "--runs-dir", "plain"]) == 2
    assert "cannot write plain: File exists; it exists and is not a directory" in _error_line(capsys)
    assert main(["analyze", str(run_copy), *QUIET_ANALYZE, "--figures", "plain"]) == 2
    assert "cannot write plain: File exists" in _error_line(capsys)
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if "figs" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert main(["analyze", str(run_copy), *QUIET_ANALYZE, "--figures", "figs"]) == 2
    assert "cannot write figs: Permission denied; you may not write there" in _error_line(capsys)


def test_a_read_only_run_can_be_shown_but_not_written(run_copy, in_tmp, capsys, monkeypatch, read_only):
    import errno

    real = os.open

    def read_only_fs(path, flags, *args, **kwargs):
        if os.path.abspath(path).startswith(str(run_copy)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_fs)
    assert main(["show", str(run_copy)]) == 0
    capsys.readouterr()
    assert main(["generate", *TINY, "--quiet", "--resume"]) == 2
    assert f"cannot write runs/{RUN_ID}/lock: Read-only file system; the file system is read-only" in \
        _error_line(capsys)
    monkeypatch.setattr(os, "open", real)
    read_only(run_copy)  # a run directory we may not write into (chmod 0o555; for root too)
    assert main(["show", str(run_copy)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run_copy), *QUIET_ANALYZE]) == 2
    assert f"cannot write {run_copy / 'analysis'}: Permission denied" in _error_line(capsys)


def test_resume_with_a_name_whose_runs_have_other_configs_is_refused(made, in_tmp, capsys):
    import json

    runs, _ = made
    hash8 = RUN_ID.rsplit("-", 1)[1]
    study = in_tmp / "runs" / f"study-{hash8}"  # the tiny run, made with --name study
    shutil.copytree(runs / RUN_ID, study)
    meta = json.loads((study / "run.json").read_text())
    settings = {**meta["settings"], "name": "study"}
    (study / "run.json").write_text(json.dumps(sealed({**meta, "run_id": f"study-{hash8}", "settings": settings})))
    (study / "config.toml").write_text((study / "config.toml").read_text() + 'name = "study"\n')
    assert main(["generate", "--name", "study", *TINY, "--epochs", "2", "--resume", "--quiet"]) == 2
    err = _error_line(capsys)
    other = RunConfig(masks=2, epochs=2, width=0.25, name="study").run_id
    assert f"there is no run {other} under runs, but 1 run(s) named study with other configs: study-{hash8} " \
           "(epochs: 1 there, 2 here); continue one with `masklab generate --resume RUN_DIR`" in err
    assert sorted(p.name for p in (in_tmp / "runs").iterdir() if p.is_dir()) == [f"study-{hash8}"]  # no new run started
    assert main(["generate", "--name", "study", *TINY, "--resume", "--quiet"]) == 0  # the same config: that run
    assert capsys.readouterr().out.strip() == f"runs/study-{hash8}"
    # default names are shared by every run of that kind: --resume stays create-or-continue (make demo)
    assert main(["generate", *TINY, "--epochs", "2", "--resume", "--quiet", "--masks", "1"]) == 0


def test_resume_a_run_directory_continues_it_with_its_own_config(made, run_copy, capsys):
    runs, _ = made
    for name in ("000001.json", "000001.mask"):
        (run_copy / "masks" / name).unlink()
    assert main(["generate", "--resume", str(run_copy), "--sparsity", "0.9"]) == 2
    assert "--sparsity 0.9 (the run has 0.5) would make another run" in _error_line(capsys)
    assert main(["generate", "--resume", str(run_copy), "--masks", "1"]) == 2
    assert "--masks 1 is fewer than the 2 masks the run plans" in _error_line(capsys)
    assert main(["generate", "--resume", str(run_copy), "--quiet", "--stack", "1"]) == 0  # (not hashed: allowed)
    assert capsys.readouterr().out.strip() == str(run_copy)
    assert [p.read_bytes() for p in sorted(run_copy.glob("masks/*.mask"))] == \
        [p.read_bytes() for p in sorted((runs / RUN_ID).glob("masks/*.mask"))]
    assert main(["generate", "--resume", RUN_ID, "--masks", "3", "--quiet"]) == 0  # by id, extended
    assert masklab.open_run(run_copy).ids == [0, 1, 2] and masklab.open_run(run_copy).config.masks == 3


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

    monkeypatch.setattr(cli_runs, "cmd_runs", broken)
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
    from masklab.config import RunConfig
    from masklab.sweep import sweep_id

    name = sweep_id(RunConfig(epochs=1, width=0.25), ["edge-popup", "biprop"], [0.5], 1)
    assert name.startswith("sweep-digits-mlp-") and len(name) == len("sweep-digits-mlp-") + 8
    figure = in_tmp / "figures" / f"{name}.png"
    assert lines[-1] == str(figure.relative_to(in_tmp)) and figure.stat().st_size > 1000
    assert any(line.split()[:2] == ["biprop", "50%"] for line in lines)  # sparsity in %, as on the figure
    assert f"{name}: sparsity and test accuracy in % (mlp on digits)" in lines  # no published column
    assert [line.split() for line in lines if line.split()[:1] == ["biprop"]][0][3].endswith("%")  # acc_mean in %
    table = __import__("pandas").read_csv(figure.with_suffix(".csv"))
    assert sorted(table["method"]) == ["biprop", "edge-popup"]
    assert len([p for p in (in_tmp / "runs").iterdir() if p.is_dir()]) == 2
    assert main([*argv, "--quiet"]) == 0  # the second call reuses both runs and prints only the path
    assert capsys.readouterr().out.strip() == str(figure.relative_to(in_tmp))
    # another grid: its own figure and table beside the first's, which stay as they were
    before = figure.read_bytes(), figure.with_suffix(".csv").read_bytes()
    assert main(["sweep", "--methods", "edge-popup", "--sparsities", "0.5", "--seeds", "1", "--epochs", "1",
                 "--width", "0.25", "--quiet"]) == 0
    other = in_tmp / capsys.readouterr().out.strip()
    assert other != figure and other.exists() and other.with_suffix(".csv").exists()
    assert (figure.read_bytes(), figure.with_suffix(".csv").read_bytes()) == before


def test_sweep_text_says_the_units_of_what_it_prints():
    """Sparsity in % beside accuracy in %; the published column and its header words only when present."""
    import pandas as pd

    from masklab.cli.sweep import sweep_text

    table = pd.DataFrame({"method": ["biprop"], "sparsity": [0.995], "n": [2], "acc_mean": [0.8], "acc_std": [0.01],
                          "best_mean": [0.81], "best_std": [0.01], "epochs": [3], "chance": [0.1], "runs": ["r"]})
    header, shown = sweep_text(table)
    assert header == "sparsity and test accuracy in %" and "published" not in header
    assert shown.loc[0, "sparsity"] == "99.5%" and shown.loc[0, "acc_mean"] == "80.00%" and "runs" not in shown
    header, shown = sweep_text(table.assign(published=[83.0], best_minus_published=[-2.0]))
    assert "differences to it in percentage points" in header
    assert (shown.loc[0, "published"], shown.loc[0, "best_minus_published"]) == ("83.00%", "-2.00 points")


def test_help_shows_no_doubled_percent_sign(capsys):
    from masklab.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        assert "%%" not in sub.format_help(), name
    assert "%%" not in (Path(__file__).parents[1] / "docs" / "cli.md").read_text()


def test_sweep_over_widths_sparsities_and_methods_writes_the_landscape_table_and_figures(in_tmp, capsys):
    """The issue's sweep, small: 2 widths x 3 sparsities x 2 methods (one with IWR) on digits, 2 masks a cell, one
    epoch: one landscape table (a row per cell x metric x layer) and one figure per metric family."""
    import pandas as pd

    argv = ["sweep", "--widths", "0.125,0.25", "--sparsities", "0.5,0.8,0.9", "--methods",
            "edge-popup,biprop+iwr:recycle_every=1", "--seeds", "2", "--epochs", "1", "--pairs", "0",
            "--cka-samples", "40", "--name", "small"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figure = in_tmp / lines[-1]
    assert figure.name.startswith("small-") and figure.is_file()
    folder = figure.with_suffix("")
    table = pd.read_parquet(folder / "landscape.parquet")
    assert table.equals(pd.read_csv(folder / "landscape.csv", keep_default_na=True).astype(table.dtypes)) or \
        len(pd.read_csv(folder / "landscape.csv")) == len(table)
    assert table["run"].nunique() == 12 and sorted(table["width"].unique()) == [0.125, 0.25]
    assert sorted(table["sparsity"].unique()) == [0.5, 0.8, 0.9]
    assert set(table["method"]) == {"edge-popup", "biprop+iwr"} and set(table["recycling"]) == {"none", "iwr"}
    assert not table.duplicated(["run", "metric", "layer"]).any()
    for family in ("accuracy", "overlap", "consensus", "disagreement", "ensemble", "cka"):
        assert (folder / f"landscape-{family}.png").stat().st_size > 1000, family
    assert not (folder / "landscape-structure.png").exists()  # 2 masks a cell: no structure test
    assert not (folder / "landscape-barrier.png").exists()  # --pairs 0
    assert any(line.startswith("small-") and "the landscape across settings" in line for line in lines)
    matching = table[(table["metric"] == "matching") & (table["layer"] == "all")]
    k = 1 - matching["sparsity"]
    np.testing.assert_allclose(matching["chance"], k ** 2 + (1 - k) ** 2, atol=2e-3)
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 0  # every cell cached: trains and measures nothing
    assert capsys.readouterr().out.strip() == lines[-1]


@pytest.mark.parametrize("argv,message", [
    (["--models", "mlp", "--model", "mlp"], "--models and --model exclude each other"),
    (["--epochs-list", "1,x"], "--epochs-list '1,x' is not a comma-separated list of ints"),
    (["--widths", "0.5,0.5"], "--widths '0.5,0.5' names 0.5 more than once"),
    (["--pairs", "some"], "--pairs 'some' is invalid"),
    (["--pairs", "-1"], "--pairs -1 is invalid: use at least 0"),
    (["--cka-samples", "1"], "--cka-samples 1 is invalid: use at least 2"),
    (["--name", "../x"], "--name '../x' is invalid"),
    (["--methods", "biprop+iwr:every=2"], "unknown key 'every'"),
    (["--models", "mlp,resnet50"], "'model' = 'resnet50' is invalid"),
])
def test_bad_sweep_axes_are_one_line_exit_2(in_tmp, capsys, argv, message):
    assert main(["sweep", *argv]) == 2
    assert message in _error_line(capsys)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "figures").exists()


@pytest.mark.parametrize("argv,message", [
    (["--methods", "lottery"], "sweep method 'lottery'"),
    (["--sparsities", "half"], "--sparsities 'half' is not a comma-separated list"),
    (["--seeds", "0"], "sweep seeds = 0 is invalid"),
    (["--seeds", "2000000"], "--seeds 2000000 is invalid: a cell is one run of at most 1,000,000 masks"),
    (["--weight-seeds", "1.5"], "--weight-seeds '1.5' is not a comma-separated list of integers"),
    (["--weight-seeds", "0,1e3"], "--weight-seeds '0,1e3' is not a comma-separated list of integers"),
    (["--weight-seeds=-1"], "--weight-seeds '-1' holds -1: a seed must be an integer in [0, 2^31)"),
    (["--weight-seeds", "2147483648"], "holds 2147483648: a seed must be an integer in [0, 2^31)"),
    (["--weight-seeds", "1" * 5000], "a seed must be an integer in [0, 2^31)"),
    (["--weight-seeds", "0,1,0"], "--weight-seeds '0,1,0' names 0 more than once"),
    (["--weight-seeds", ","], "--weight-seeds ',' names nothing"),
    (["--sparsities", "0.5,1.5"], "--sparsities '0.5,1.5' holds 1.5: a sparsity (the fraction of weights removed) "
                                  "must lie in [0, 1)"),
    (["--sparsities=-0.1"], "--sparsities '-0.1' holds -0.1"),
    (["--sparsities", "nan"], "--sparsities 'nan' holds nan"),
    (["--sparsities", "0.5,inf"], "holds inf"),
    (["--sparsities=-0,0"], "--sparsities '-0,0' names 0 more than once"),
    (["--sparsities", "0.5,0.50"], "names 0.5 more than once"),
    (["--methods", "biprop,biprop"], "--methods 'biprop,biprop' names biprop more than once"),
    (["--methods", ""], "--methods '' names nothing"),
    (["--epochs", "1000000000"], "'epochs' = 1000000000 is invalid"),
])
def test_bad_sweep_input_is_one_line_exit_2(in_tmp, capsys, argv, message):
    assert main(["sweep", *argv]) == 2
    assert message in _error_line(capsys)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "figures").exists()


def test_read_only_commands_end_fast_and_flush_their_output(tmp_path):
    """`masklab runs` (one of the commands that skip the interpreter's teardown) still prints everything."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "masklab", "runs", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().startswith("no runs under")
