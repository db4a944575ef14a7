"""TrainConfig validation and keys; LABKIT_HOME helpers."""

from __future__ import annotations

import json

import pytest

from labkit.home import OfflineError, atomic_write_json, labkit_home, pip_fetch
from labkit.train import ConfigError, TrainConfig


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("rank", 0, "--rank: must be an integer in [1, 4096]"),
        ("batch_size", 0, "--batch-size"),
        ("precision", "fp8", "--precision: must be one of fp32|amp-fp16"),
        ("method", "dora", "--method"),
        ("dropout", 1.0, "--dropout: must be in [0, 1)"),
        ("alpha_policy", "sqrt", "--alpha-policy"),
        ("grad_accum", 1.5, "--grad-accum"),
    ],
)
def test_bad_config_names_the_field_and_the_range(field, value, needle):
    with pytest.raises(ConfigError) as error:
        TrainConfig(**{field: value})
    assert needle in str(error.value)


def test_qlora_refuses_pure_half_precision():
    with pytest.raises(ConfigError, match="--precision"):
        TrainConfig(method="qlora", precision="bf16")


def test_parallel_is_ddp_or_fsdp_and_qlora_is_not_sharded():
    with pytest.raises(ConfigError, match="--parallel: must be one of ddp|fsdp"):
        TrainConfig(parallel="zero3")
    with pytest.raises(ConfigError, match="--parallel: must be ddp with QLoRA"):
        TrainConfig(method="qlora", parallel="fsdp")
    assert TrainConfig(method="lora", parallel="fsdp").parallel == "fsdp"


def test_key_is_stable_and_sensitive():
    a, b = TrainConfig(rank=8), TrainConfig(rank=8)
    assert a.key() == b.key()
    assert a.key() != a.replace(rank=16).key()
    assert a.key() != a.replace(seed=1).key()
    assert TrainConfig.from_dict(a.to_dict()) == a


def test_alpha_policies():
    assert TrainConfig(rank=8, alpha_policy="2r").lora_alpha == 16
    assert TrainConfig(rank=32, alpha_policy="fixed").lora_alpha == 16
    rs = TrainConfig(rank=64, alpha_policy="rslora")
    assert rs.use_rslora and rs.lora_alpha == 16


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match="--colour"):
        TrainConfig.from_dict({"colour": "red"})


def test_labkit_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "cache"))
    assert labkit_home() == tmp_path / "cache" and labkit_home().is_dir()


def test_atomic_write_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "record.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})  # refused before anything is written
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_pip_fetch_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path))
    with pytest.raises(OfflineError, match="labkit fetch"):
        pip_fetch("labkit-no-such-package-xyz", "0.0.1", sdist=True)
