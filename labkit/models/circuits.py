"""The induction circuit, written by hand into ``tiny``'s initial weights — and the probe that finds it.

Copying a span seen earlier in the context (a name from the question into the SQL) is what an
*induction circuit* does (Olsson et al., 2022, "In-context learning and induction heads"): a
**previous-token head** in one layer writes "the token before me was A" into every position; an
**induction head** in a later layer, at a new occurrence of A, attends to the position whose
previous token was A and copies the token it finds there. Real models discover the pair after
hundreds of millions of tokens. ``tiny``'s 3-minute pretraining sees a few hundred thousand, and
gradient descent alone does not find it (on pure copy data the repeated-token probe stayed near
1.0 for 1,500 steps here), so ``tiny`` starts with the circuit already in its weights, built the
way the paper describes it; pretraining then adapts it with everything else.

The residual stream (width ``d``) at initialisation:

* ``[0, d/2)``: token identity — the embedding's random vectors live here only;
* ``[d/2, d/2 + head_dim)``: "the previous token" — layer 0's previous-token head writes here;
* ``d - 1``: a constant, the same in every embedding — a bias feature, so a head can attend by
  position alone (through RoPE) whatever the token.

Every other residual branch (attention output and MLP down projections) starts small, so the
residual stream starts as the embedding and the two planted heads are not drowned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

PREV_LAYER = 0
INDUCTION_LAYER = 1


@dataclass(frozen=True)
class CircuitGains:
    """How strong the planted circuit is at initialisation (tuned on tiny; see the docstrings)."""

    prev_margin: float = 8.0  # attention-logit lead of distance 1 over every other distance
    match_gain: float = 2.0  # induction head: query/key weight on the matched dimensions
    copy_gain: float = 3.0  # induction head: how loudly the found token is written back
    final_gain: float = 4.0  # final RMSNorm weight: lets a copied token win the softmax
    branch_scale: float = 0.1  # every other residual branch starts this much smaller


def previous_token_kernel(inv_freq: torch.Tensor, max_distance: int = 512, iters: int = 2000) -> tuple[torch.Tensor, float]:
    """Weights over RoPE frequency pairs whose positional score peaks at distance 1.

    A head whose query and key are constant vectors scores key distance Δ as
    ``Σ_i w_i cos((Δ - 1) θ_i)`` under RoPE. This picks non-negative ``w`` (summing to 1) that
    maximise the lead of Δ = 1 over every other Δ up to ``max_distance`` (a smooth max-min,
    solved by Adam in float64: deterministic). Returns the weights and that lead per unit weight.
    """
    theta = inv_freq.detach().double().cpu()
    distances = torch.tensor([d for d in range(max_distance + 1) if d != 1], dtype=torch.float64)
    lead = 1 - torch.cos((distances[:, None] - 1) * theta[None, :])  # lead of Δ=1 over Δ, per pair
    logits = torch.zeros(len(theta), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        optimizer = torch.optim.Adam([logits], lr=0.05)
        for _ in range(iters):
            soft_min = -torch.logsumexp(-(lead @ torch.softmax(logits, 0)) * 200, 0) / 200
            (logits.grad,) = torch.autograd.grad(-soft_min, [logits])  # a fit, not a training step
            optimizer.step()
    weights = torch.softmax(logits.detach(), 0)
    return weights.float(), float((lead @ weights).min())


def _position_free_slots(inv_freq: torch.Tensor, head_dim: int, max_distance: int, max_angle: float = 0.6) -> list[int]:
    """Head dimensions whose RoPE rotation stays under ``max_angle`` over ``max_distance``.

    An induction head compares *content* (this token vs. the key's previous token); RoPE would
    scramble that comparison on fast-rotating dimensions, so the match uses only the slow ones.
    """
    half = head_dim // 2
    pairs = [i for i in range(half) if float(inv_freq[i]) * max_distance <= max_angle]
    return pairs + [i + half for i in pairs]


@torch.no_grad()
def plant_induction_circuit(model: Any, gains: CircuitGains = CircuitGains(), max_distance: int = 256) -> dict[str, Any]:
    """Write a previous-token head (layer 0, head 0) and an induction head (layer 1, head 0) into ``model``.

    ``model``: a freshly initialised Llama-architecture ``*ForCausalLM`` with tied embeddings and
    at least two layers. Returns a summary of what was planted (saved in tiny's build record).
    """
    cfg = model.config
    width, head_dim = cfg.hidden_size, cfg.head_dim
    half = head_dim // 2
    token_dims, prev_start, bias_dim = width // 2, width // 2, width - 1
    if cfg.num_hidden_layers < 2 or prev_start + head_dim > bias_dim or head_dim > token_dims:
        raise ValueError(f"model: needs >= 2 layers and hidden_size >= 2 * head_dim + 1; got {cfg.num_hidden_layers} "
                         f"layers, hidden {width}, head_dim {head_dim}")
    layers = model.model.layers
    for layer in layers:
        layer.self_attn.o_proj.weight.mul_(gains.branch_scale)
        layer.mlp.down_proj.weight.mul_(gains.branch_scale)

    embed = model.model.embed_tokens.weight
    embed[:, token_dims:] = 0
    bias_value = float(embed[:, :token_dims].norm(dim=1).mean())
    embed[:, bias_dim] = bias_value
    rms = math.sqrt((embed[:, :token_dims].pow(2).sum(1).mean().item() + bias_value**2) / width)
    bias_in = bias_value / rms  # the bias feature after the input RMSNorm
    inv_freq = model.model.rotary_emb.inv_freq

    # Layer 0, head 0: constant query and key; RoPE turns their product into a score of distance alone.
    q, k, v, o = _head_weights(layers[PREV_LAYER].self_attn, head_dim)
    weights, unit_lead = previous_token_kernel(inv_freq, max_distance=2 * max_distance)
    total = gains.prev_margin / unit_lead
    for i in range(half):
        product = float(weights[i]) * total * math.sqrt(head_dim)  # q_i * k_i (scores are divided by sqrt(head_dim))
        if product <= 1e-9:
            continue
        scale, angle = math.sqrt(product), float(inv_freq[i])
        q[i, bias_dim] = scale / bias_in
        k[i, bias_dim] = scale * math.cos(angle) / bias_in  # key rotated one step: the peak sits at distance 1
        k[i + half, bias_dim] = scale * math.sin(angle) / bias_in
    for j in range(head_dim):  # value: the token's identity; output: into the previous-token dims
        v[j, j] = 1.0
        o[prev_start + j, j] = rms

    # Layer 1, head 0: query = this token, key = the key position's previous token; copy what is there.
    q, k, v, o = _head_weights(layers[INDUCTION_LAYER].self_attn, head_dim)
    slots = _position_free_slots(inv_freq, head_dim, max_distance)
    for n, slot in enumerate(slots):
        q[slot, n] = gains.match_gain
        k[slot, prev_start + n] = gains.match_gain
    for j in range(head_dim):
        v[j, j] = 1.0
        o[j, j] = gains.copy_gain * rms
    model.model.norm.weight.fill_(gains.final_gain)
    return {"gains": asdict(gains), "previous_token_head": [PREV_LAYER, 0], "induction_head": [INDUCTION_LAYER, 0],
            "matched_dims": len(slots), "previous_token_lead": gains.prev_margin}


def _head_weights(attn: Any, head_dim: int) -> tuple[torch.Tensor, ...]:
    """Views of query head 0 / key-value head 0 in ``attn``'s projections, zeroed (planted from scratch)."""
    q = attn.q_proj.weight[:head_dim]
    k = attn.k_proj.weight[:head_dim]
    v = attn.v_proj.weight[:head_dim]
    o = attn.o_proj.weight[:, :head_dim]
    for w in (q, k, v, o):
        w.zero_()
    return q, k, v, o


@torch.no_grad()
def head_scores(model: Any, *, length: int = 40, sequences: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """For every attention head: how much it attends to the previous token, and to the induction target.

    Fed random tokens repeated twice; ``previous_token`` is the mean attention from each position to
    the one before it, ``induction`` the mean attention, in the second copy, to the position just
    after the earlier occurrence of the current token (Olsson et al.'s prefix-matching score).
    A previous-token head scores near 1 on the first, an induction head on the second.
    """
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length: must be an integer >= 2; got {length!r}")
    gen = torch.Generator().manual_seed(seed)
    n_special = 4  # skip ids 0-3: tiny's special tokens (control tokens in most vocabularies)
    run = torch.randint(n_special, int(model.config.vocab_size), (sequences, length), generator=gen)
    ids = torch.cat([run, run], dim=1).to(next(model.parameters()).device)
    previous = getattr(model.config, "_attn_implementation", None)
    was_training = model.training
    model.eval()
    try:
        model.set_attn_implementation("eager")  # only eager attention returns the weights
        attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        if previous:
            model.set_attn_implementation(previous)
        model.train(was_training)
    rows = torch.arange(1, 2 * length)
    second = torch.arange(length, 2 * length)
    rows_out = []
    for layer, att in enumerate(attentions):
        att = att.float()
        for head in range(att.shape[1]):
            a = att[:, head]
            rows_out.append({
                "layer": layer,
                "head": head,
                "previous_token": float(a[:, rows, rows - 1].mean()),
                "induction": float(a[:, second, second - length + 1].mean()),
            })
    return rows_out
