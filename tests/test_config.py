"""Tests for masklab.config: validation messages, TOML in and out, the canonical hash and the run id."""

from __future__ import annotations

import hashlib
import re

import pytest

from masklab.config import RunConfig, load_toml, read_config, to_toml
from masklab.errors import UserError


# ---- defaults, seeds, ids ---------------------------------------------------------------------------------
def test_default_is_valid_and_its_hash_is_the_empty_dict():
    config = RunConfig().validate()
    assert config.hashed_fields() == {}
    assert config.hash == hashlib.sha256(b"{}").hexdigest()
    assert config.run_id == f"digits-mlp-edge-popup-s0.5-{config.hash[:8]}"
    assert re.fullmatch(r"[a-z0-9.+-]+-[0-9a-f]{8}", config.run_id)


def test_seeds_vary_the_score_seed_only_unless_asked():
    config = RunConfig(weight_seed=7, score_seed=100, data_seed=3)
    assert [config.seeds(i) for i in range(3)] == [(7, 100, 3), (7, 101, 3), (7, 102, 3)]
    varied = config.replace(vary_data_seed=True)
    assert [varied.seeds(i) for i in range(3)] == [(7, 100, 3), (7, 101, 4), (7, 102, 5)]


def test_name_replaces_the_descriptive_prefix_but_not_the_hash():
    config = RunConfig(name="study1", recycle="iwr", sparsity=0.9)
    assert config.run_id == f"study1-{config.hash[:8]}"
    assert config.hash == config.replace(name=None).hash
    assert config.replace(name=None).run_id.startswith("digits-mlp-edge-popup+iwr-s0.9-")


# ---- the hash ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes", [
    {"sparsity": 0.5},  # the default, written out
    {"lr": 0.1},  # edge-popup's own default
    {"weight_init": "signed-constant", "scale_fan": False},
    {"recycle_rate": 0.3, "recycle_every": 5},  # no effect without recycling
    {"masks": 100}, {"device": "cpu"}, {"stack": 8}, {"name": "x"}, {"data_root": "/data"},  # unhashed
    {"sparsity": 0.5, "width": 1},  # an int where the default is the float 1.0
])
def test_hash_ignores_defaults_and_fields_that_do_not_change_masks(changes):
    assert RunConfig(**changes).hash == RunConfig().hash


@pytest.mark.parametrize("changes", [
    {"sparsity": 0.9}, {"method": "biprop"}, {"recycle": "iwr"}, {"lr": 0.05}, {"score_seed": 1},
    {"weight_seed": 1}, {"vary_data_seed": True}, {"keep_scores": True}, {"snapshot_every": 2},
    {"recycle": "iwr", "recycle_rate": 0.3}, {"width": 0.25}, {"epochs": 2},
])
def test_hash_changes_with_fields_that_decide_the_masks(changes):
    assert RunConfig(**changes).hash != RunConfig().hash


def test_numbers_hash_by_field_type():
    assert RunConfig(sparsity=0).hash == RunConfig(sparsity=0.0).hash
    assert RunConfig(sparsity=0).hashed_fields() == {"sparsity": 0.0}
    assert RunConfig(recycle="iwr", recycle_rate=0.1).hash == RunConfig(recycle="iwr").hash  # the IWR default


def test_biprop_defaults_resolve():
    config = RunConfig(method="biprop", recycle="iwr")
    assert (config.resolved("weight_init"), config.resolved("scale_fan"), config.resolved("lr")) == \
        ("kaiming-normal", True, 0.1)
    assert (config.resolved("recycle_rate"), config.resolved("recycle_every")) == (0.2, 10)
    assert RunConfig(method="dense").resolved("lr") == 0.01


# ---- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"sparsity": 1.5}, r"'sparsity' = 1\.5 .*\[0, 1\)"),
    ({"sparsity": -0.1}, r"'sparsity'"),
    ({"masks": 0}, r"'masks' = 0 .*integer >= 1"),
    ({"epochs": 0}, r"'epochs'"),
    ({"model": "vgg"}, r"'model' = 'vgg' .*choose one of mlp, lenet-300-100, conv2"),
    ({"dataset": "imagenet"}, r"'dataset' = 'imagenet' .*choose one of digits"),
    ({"method": "sgd"}, r"'method' .*edge-popup, biprop, dense"),
    ({"recycle": "often"}, r"'recycle' .*none, iwr, iterand"),
    ({"method": "dense", "recycle": "iwr"}, r"'recycle' .*needs scores"),
    ({"recycle": "iwr", "recycle_rate": 0.9}, r"'recycle_rate' = 0\.9"),
    ({"recycle": "iwr", "recycle_every": 0}, r"'recycle_every'"),
    ({"width": 0}, r"'width'"),
    ({"batch_size": 0}, r"'batch_size'"),
    ({"lr": -1.0}, r"'lr'"),
    ({"momentum": 1.0}, r"'momentum'"),
    ({"momentum": "x"}, r"'momentum'"),
    ({"weight_decay": -1.0}, r"'weight_decay'"),
    ({"weight_seed": -1}, r"'weight_seed'"),
    ({"score_seed": 2**31}, r"'score_seed'"),
    ({"device": "tpu"}, r"'device' .*auto, cpu, cuda"),
    ({"name": "../escape"}, r"'name'"),
    ({"name": "/abs"}, r"'name'"),
    ({"name": "a..b"}, r"'name'"),
    ({"name": ".hidden"}, r"'name'"),
    ({"input_shape": "3x0x2"}, r"'input_shape'"),
    ({"weight_init": "zeros"}, r"'weight_init' .*signed-constant"),
    ({"snapshot_every": -1}, r"'snapshot_every'"),
])
def test_validation_names_the_field_and_the_allowed_values(changes, message):
    with pytest.raises(UserError, match=message):
        RunConfig(**changes).validate()


# ---- dict and TOML ----------------------------------------------------------------------------------------
def test_from_dict_coerces_and_refuses_unknown_keys():
    config = RunConfig.from_dict({"sparsity": "0.9", "masks": "4", "keep-scores": "true", "stack": "auto"})
    assert (config.sparsity, config.masks, config.keep_scores, config.stack) == (0.9, 4, True, 0)
    with pytest.raises(UserError, match="unknown key 'sparsityy'"):
        RunConfig.from_dict({"sparsityy": 0.5})
    with pytest.raises(UserError, match="key 'masks' = 2.5 is not a valid int"):
        RunConfig.from_dict({"masks": 2.5})
    with pytest.raises(UserError, match="key 'keep_scores'"):
        RunConfig.from_dict({"keep_scores": "maybe"})


@pytest.mark.parametrize("config", [
    RunConfig(),
    RunConfig(dataset="synthetic", input_shape="3x8x8", model="conv2", width=0.1, method="biprop",
              recycle="iwr", recycle_rate=0.25, recycle_warmup=2, sparsity=0.95, lr=1e-4, name='q"uote',
              data_root="/tmp/some path/é", keep_scores=True, snapshot_every=3, vary_data_seed=True),
])
def test_toml_round_trip_keeps_every_field_and_the_hash(tmp_path, config):
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config.to_dict()))
    back = read_config(path)
    assert back == config
    assert back.hash == config.hash and back.run_id == config.run_id


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


def test_public_names_resolve():
    import masklab

    for name in ("open_run", "generate", "MaskSet", "RunConfig", "distances", "random_baseline", "analyze",
                 "compare", "interpolate", "list_runs"):
        assert callable(getattr(masklab, name)), name
