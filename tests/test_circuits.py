"""labkit.models.circuits: the hand-written induction circuit in tiny's initial weights, and the head probe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from labkit.models.circuits import head_scores, plant_induction_circuit, previous_token_kernel
from labkit.models.probes import copy_losses
from labkit.models.tiny import RECIPE, RECORD_FILE, is_built, tiny_config


def fresh_tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config()).eval()


def score(rows: list[dict], layer: int, head: int, key: str) -> float:
    return next(r[key] for r in rows if r["layer"] == layer and r["head"] == head)


def test_the_previous_token_kernel_peaks_at_distance_one():
    inv_freq = fresh_tiny().model.rotary_emb.inv_freq
    weights, lead = previous_token_kernel(inv_freq, max_distance=512)
    assert torch.all(weights >= 0) and math.isclose(float(weights.sum()), 1.0, rel_tol=1e-5)
    assert lead > 0.25  # distance 1 leads every other distance by this much per unit weight
    distances = torch.arange(0, 513).double()
    scores = (weights.double()[None, :] * torch.cos((distances[:, None] - 1) * inv_freq.double()[None, :])).sum(1)
    assert int(scores.argmax()) == 1
    assert float(scores[1] - torch.cat([scores[:1], scores[2:]]).max()) == pytest.approx(lead, rel=1e-3)


def test_a_planted_model_copies_before_any_training_and_a_plain_one_does_not(tiny):
    _, tokenizer = tiny
    plain = fresh_tiny()
    planted = fresh_tiny()
    summary = plant_induction_circuit(planted)
    assert summary["previous_token_head"] == [0, 0] and summary["induction_head"] == [1, 0]
    rows = head_scores(planted)
    assert score(rows, 0, 0, "previous_token") > 0.95
    assert score(rows, 1, 0, "induction") > 0.9
    assert copy_losses(planted, tokenizer)["ratio"] < 0.5  # the second copy of random tokens is predicted
    plain_rows = head_scores(plain)
    assert max(r["induction"] for r in plain_rows) < 0.2 and max(r["previous_token"] for r in plain_rows) < 0.5
    assert copy_losses(plain, tokenizer)["ratio"] > 0.95


def test_head_scores_restore_the_model_and_reject_bad_sizes():
    model = fresh_tiny().train()
    before = model.config._attn_implementation
    head_scores(model, length=8, sequences=1)
    assert model.training and model.config._attn_implementation == before
    with pytest.raises(ValueError, match="length"):
        head_scores(model, length=1)


def test_planting_refuses_a_model_without_room_for_the_circuit():
    config = tiny_config()
    config.num_hidden_layers = 1
    with pytest.raises(ValueError, match="2 layers"):
        plant_induction_circuit(LlamaForCausalLM(config))


def test_the_shared_tiny_kept_its_induction_head_through_pretraining(tiny):
    from labkit.models import resolve_model

    model, tokenizer = tiny
    record = json.loads((Path(resolve_model("tiny")) / RECORD_FILE).read_text())
    assert record["recipe"] == RECIPE and record["induction_circuit"]["induction_head"] == [1, 0]
    rows = head_scores(model)
    assert score(rows, 0, 0, "previous_token") > 0.5
    assert score(rows, 1, 0, "induction") > 0.3
    assert max(r["induction"] for r in rows) == pytest.approx(record["induction_score"], abs=0.02)
    assert copy_losses(model, tokenizer)["ratio"] < 0.9


def test_a_build_of_an_older_recipe_is_not_reused(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / RECORD_FILE).write_text(json.dumps({"recipe": RECIPE - 1}))
    assert not is_built(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({"recipe": RECIPE}))
    assert is_built(tmp_path)
    (tmp_path / RECORD_FILE).write_text("{torn")
    assert not is_built(tmp_path)
