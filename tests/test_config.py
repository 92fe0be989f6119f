"""Tests for masklab.config: validation messages, the TOML round trip, the canonical hash and the run id (config
files themselves: tests/test_config_file.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from masklab import config as config_module
from masklab.config import DATASET_NAMES, MAX_MASKS, MODEL_NAMES, RunConfig, read_config
from masklab.config_file import to_toml
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
    # sizes past the documented limits: refused with the limit instead of a MemoryError or a run without end
    ({"masks": MAX_MASKS + 1}, r"'masks' = 1000001 .*at most 1,000,000 per run \(mask files have six-digit ids\)"),
    ({"masks": 10**9}, r"'masks' = 1000000000 .*at most 1,000,000"),
    ({"epochs": 10**9}, r"'epochs' = 1000000000 .*at most 100,000"),
    ({"batch_size": 2**31}, r"'batch_size' .*at most 2\^31 - 1"),
    ({"stack": 10**20}, r"'stack' .*at most 2\^31 - 1"),
    ({"snapshot_every": 2**40}, r"'snapshot_every'"),
    ({"recycle": "iwr", "recycle_every": 2**40}, r"'recycle_every'"),
    ({"recycle": "iwr", "recycle_every": 1.5}, r"'recycle_every' = 1\.5"),
    ({"input_shape": "1000x1000x1000x1000x1000"}, r"'input_shape' .*1,000,000,000,000,000 values .*limit of 1,048,576"),
    ({"input_shape": "1025x1024"}, r"'input_shape' .*1,049,600 values"),
    ({"input_shape": "9" * 5000}, r"'input_shape'"),
    ({"input_shape": "03x32x32"}, r"'input_shape'"),
    ({"score_seed": 2**31 - 10}, r"'score_seed' .*score_seed \+ masks - 1 \(2147483653\) must stay below 2\^31"),
    ({"data_seed": 2**31 - 1, "vary_data_seed": True}, r"'data_seed' .*data_seed \+ masks - 1"),
    # not a number: nan and inf from TOML (`sparsity = nan`) or the command line (`--lr inf`)
    *[({name: value}, rf"'{name}' = {value!r}") for name in ("sparsity", "width", "lr", "momentum", "weight_decay")
      for value in (math.nan, math.inf, -math.inf)],
    ({"recycle": "iwr", "recycle_rate": math.nan}, r"'recycle_rate' = nan"),
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


# any Unicode scalar value (surrogates are not text: `validate` refuses them, TOML cannot hold them)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_FLOAT = st.floats(allow_nan=False)  # -0.0, subnormals, +-inf included; NaN is never equal to itself
_INT = st.integers(-(2**63), 2**63 - 1)  # TOML's integers


@st.composite
def _configs(draw) -> RunConfig:
    values = {}
    for f in dataclasses.fields(RunConfig):
        if f.name.startswith("_"):
            continue
        kind = config_module.field_type(f.name)
        strategy = {bool: st.booleans(), int: _INT, float: _FLOAT, str: _TEXT}[kind]
        optional = f.default is None
        values[f.name] = draw(st.none() | strategy if optional else strategy)
    return RunConfig(**values)


@settings(max_examples=300, deadline=None)
@given(config=_configs())
def test_any_config_survives_toml_with_its_hash(config):
    """RunConfig -> config.toml text -> RunConfig: equal, same hash and id, for any Unicode in its strings and
    any float (-0.0 is written as 0.0)."""
    text = to_toml(config.to_dict())
    assert not re.search(r"= -0\.0$", text, re.MULTILINE)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        back = read_config(path)
    assert back == config
    assert back.hash == config.hash and back.run_id == config.run_id


def test_public_names_resolve():
    import masklab

    for name in ("open_run", "generate", "MaskSet", "RunConfig", "distances", "random_baseline", "analyze",
                 "compare", "interpolate", "list_runs"):
        assert callable(getattr(masklab, name)), name


def test_limits_leave_the_largest_allowed_values_valid():
    RunConfig(masks=MAX_MASKS, epochs=100_000, batch_size=2**31 - 1).validate()
    RunConfig(dataset="synthetic", input_shape="1024x1024", score_seed=2**31 - 16).validate()
    with pytest.raises(UserError, match=r"a sample of 1,048,577 values is more than the limit of 1,048,576"):
        RunConfig(dataset="synthetic", input_shape="1048577").validate()  # one value past the limit
    RunConfig(data_seed=2**31 - 1).validate()  # data seeds vary only with vary_data_seed


# ---- -0 is 0 ----------------------------------------------------------------------------------------------
FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if str(f.type).startswith("float")]


def test_every_float_field_is_known():
    assert set(FLOAT_FIELDS) == {"width", "sparsity", "recycle_rate", "lr", "momentum", "weight_decay", "keep_fraction"}


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_negative_zero_is_the_same_run_as_zero(name, tmp_path):
    zero, negative = RunConfig(**{name: 0.0}), RunConfig(**{name: -0.0})
    assert math.copysign(1.0, getattr(negative, name)) == 1.0
    assert negative.hash == zero.hash and negative.run_id == zero.run_id and negative == zero
    assert negative.replace(masks=3).run_id == zero.run_id
    assert math.copysign(1.0, getattr(RunConfig.from_dict({name: "-0"}), name)) == 1.0
    path = tmp_path / "c.toml"
    path.write_text(f"{name} = -0.0\n")
    assert read_config(path).hash == zero.hash
    assert "-0" not in to_toml(negative.to_dict())


def test_negative_zero_sparsity_names_the_run_s0():
    assert RunConfig(sparsity=-0.0).run_id == RunConfig(sparsity=0).run_id
    assert RunConfig(sparsity=-0.0).run_id.startswith("digits-mlp-edge-popup-s0-")


def test_nan_from_toml_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("sparsity = nan\nwidth = inf\n")
    with pytest.raises(UserError, match=r"'sparsity' = nan is invalid"):
        read_config(path).validate()


# ---- names --------------------------------------------------------------------------------------------
def test_the_name_lists_equal_the_registries():
    """The config validates dataset and model names without importing torch: its lists must be the keys of
    the registries that load and build them, in the same order (the order error messages list them in)."""
    from masklab.data import DATASETS
    from masklab.nn.models import MODELS

    assert list(DATASET_NAMES) == list(DATASETS)
    assert list(MODEL_NAMES) == list(MODELS)


@pytest.mark.parametrize("changes, expect", [
    ({}, {"lr": 0.1, "weight_init": "signed-constant", "scale_fan": False}),
    ({"method": "biprop"}, {"lr": 0.1, "weight_init": "kaiming-normal", "scale_fan": True}),
    ({"method": "dense"}, {"lr": 0.01, "weight_init": "kaiming-normal", "scale_fan": False}),
    ({"method": "biprop", "recycle": "iwr"}, {"recycle_rate": 0.2, "recycle_every": 10}),
    ({"recycle": "iterand", "lr": 0.05}, {"lr": 0.05, "recycle_rate": 0.1, "recycle_every": 1}),
])
def test_resolved_config_gives_every_field_the_value_used_and_keeps_the_hash(changes, expect):
    config = RunConfig(**changes)
    values = config.resolved_config()
    assert set(values) == set(config.to_dict())
    assert {k: values[k] for k in expect} == expect
    assert all(values[k] == v for k, v in config.to_dict().items() if v is not None)  # what was set stays
    resolved = config.resolve()
    assert RunConfig(**values) == resolved and resolved.hash == config.hash and resolved.run_id == config.run_id
    assert resolved.hashed_fields() == config.hashed_fields()
