"""Config files (masklab.config_file): TOML errors as one line, a [run] table flattened, what to_toml writes, and
paths that are not regular files, too large or not UTF-8 refused."""

from __future__ import annotations

import errno
import os
import re

import pytest

from masklab.config import RunConfig, read_config
from masklab.config_file import MAX_CONFIG_BYTES, load_toml, to_toml
from masklab.errors import UserError


def test_load_toml_errors_are_one_line_user_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("sparsity = [\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_toml(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    nested = tmp_path / "nested.toml"
    nested.write_text("[model]\nwidth = 1\n")
    with pytest.raises(UserError, match=r"unexpected table \[model\]"):
        load_toml(nested)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("maskz = 3\n")
    with pytest.raises(UserError, match=r"unknown.toml: unknown key 'maskz'"):
        read_config(unknown)


def test_a_run_table_is_flattened(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[run]\nmasks = 3\nsparsity = 0.8\n")
    assert read_config(path) == RunConfig(masks=3, sparsity=0.8)


def test_to_toml_writes_scalars_and_skips_none():
    text = to_toml({"a": 1, "b": 0.5, "c": True, "d": "x", "e": None, "f": 1e20})
    assert text == 'a = 1\nb = 0.5\nc = true\nd = "x"\nf = 1e+20\n'


# ---- config files that are not files ----------------------------------------------------------------------
@pytest.mark.timeout(60)  # reading /dev/zero or a FIFO without a writer would never end
def test_a_config_path_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, kind in [("/dev/zero", "a character device"), (fifo, "a FIFO"), (tmp_path, "a directory")]:
        with pytest.raises(UserError, match=f"config file {re.escape(str(path))} is {kind}, not a regular file"):
            load_toml(path)
    link = tmp_path / "link.toml"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserError, match="is a character device"):
        read_config(link)


def test_a_huge_or_binary_config_file_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(UserError, match=r"larger than 1,048,576 bytes"):
        load_toml(big)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"masks = 3\n\xff\xfe\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_toml(binary)
    unreadable = tmp_path / "unreadable.toml"
    unreadable.write_text("masks = 3\n")
    real = os.open

    def refused(path, flags, *args, **kwargs):  # what chmod 0 does to anyone but root (CI runs as root)
        if os.fspath(path) == str(unreadable):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(UserError, match="unreadable.toml cannot be read: Permission denied"):
        load_toml(unreadable)
