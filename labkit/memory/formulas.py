"""The lesson: where every byte of a fine-tuning step goes, as readable formulas.

Parameters, gradients and optimizer states are counts × bytes. Activations are what autograd
*saves for backward*; we walk one transformer block the way its ``forward`` runs and write down,
op by op, what each op keeps (an op saves an input only when the *other* input needs a gradient):

* a linear ``y = x Wᵀ`` keeps ``x`` if ``W`` trains (for dW) and ``W`` if ``x`` needs a grad (dX) —
  so a frozen base linear keeps *nothing* of its own, which is why LoRA saves less;
* RMSNorm keeps its input (as fp32: ``hidden_states.to(float32)``), ``rsqrt`` (b·s·1, fp32)
  and, if its weight trains, the normalised tensor;
* SiLU/GELU keep their input, ``act(gate) * up`` keeps both factors;
* flash/SDPA attention keeps q, k, v, the output and a log-sum-exp (b·heads·s, fp32) — no s×s
  matrix; eager attention keeps the s×s softmax (in fp32) and, with GQA, K/V repeated to all heads;
* the loss keeps ``log_softmax`` of the logits in fp32 (b·s·V·4) — often the biggest single tensor;
* autocast (AMP) keeps a half copy of every linear's input *and* weight.

Storages are counted once (a view of a saved tensor costs nothing extra) and parameters are
excluded (they exist anyway): exactly what :mod:`labkit.memory.recorder` measures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from labkit.memory.arch import ArchInfo
from labkit.memory.setup import MemorySetup

BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int64": 8, "bool": 1}


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------
def lora_params(arch: ArchInfo, setup: MemorySetup) -> int:
    """r·(fan_in + fan_out) per adapted linear, per layer."""
    lins = arch.linears_matching(setup.lora.targets_for(arch.model_type))
    return arch.layers * sum(setup.rank * (lin.fan_in + lin.fan_out) for lin in lins)


def lora_tensors(arch: ArchInfo, setup: MemorySetup) -> int:
    return arch.layers * 2 * len(arch.linears_matching(setup.lora.targets_for(arch.model_type)))


def quantized_linear_params(arch: ArchInfo) -> list[int]:
    """Numels of the weights bitsandbytes quantizes: every block linear (never embeddings/LM head)."""
    return [lin.fan_in * lin.fan_out for lin in arch.block_linears for _ in range(arch.layers)]


def nf4_weight_bytes(numel: int, double_quant: bool, blocksize: int = 64) -> int:
    """Packed 4-bit data (2 values a byte) + absmax constants (+ nested constants with double quant).

    Plain: one fp32 absmax per 64 values (4.5 bits/param). Double quant: absmax stored as uint8,
    with one fp32 per 256 of them plus a 256-entry fp32 code book and an fp32 offset (≈4.127 bits).
    Each layer also keeps its 16-value fp32 code book.
    """
    blocks = math.ceil(numel / blocksize)
    data = math.ceil(numel / 2)
    code = 16 * 4
    if not double_quant:
        return data + 4 * blocks + code
    nested_blocks = math.ceil(blocks / 256)
    return data + blocks + 4 * nested_blocks + 256 * 4 + 4 + code


def weight_bytes(arch: ArchInfo, setup: MemorySetup) -> dict[str, int]:
    """Bytes of the model's weights (+ LoRA adapters, kept in fp32 by peft) and buffers."""
    p = BYTES[setup.param_dtype]
    out: dict[str, int] = {}
    if setup.method == "qlora":
        q_numels = quantized_linear_params(arch)
        out["quantized"] = sum(nf4_weight_bytes(n, setup.double_quant) for n in q_numels)
        out["unquantized"] = (arch.params_total - sum(q_numels)) * 4  # embeddings, head, norms, biases → fp32
    else:
        out["base"] = arch.params_total * p
    if setup.method in ("lora", "qlora"):
        out["adapters"] = lora_params(arch, setup) * 4
    out["buffers"] = arch.buffer_bytes if setup.param_dtype == "fp32" or setup.method == "qlora" else arch.buffer_bytes_half
    return out


def trainable_params(arch: ArchInfo, setup: MemorySetup) -> int:
    return arch.params_total if setup.method == "full" else lora_params(arch, setup)


def trainable_tensors(arch: ArchInfo, setup: MemorySetup) -> int:
    return arch.param_tensors if setup.method == "full" else lora_tensors(arch, setup)


def trainable_bytes_per_param(setup: MemorySetup) -> int:
    """Gradients and optimizer states take the dtype of the trainable parameters."""
    return 4 if setup.method != "full" else BYTES[setup.param_dtype]


def gradient_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """One gradient per trainable parameter, same dtype (alive from backward to the optimizer step)."""
    return trainable_params(arch, setup) * trainable_bytes_per_param(setup)


def optimizer_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """AdamW: m and v (2 × param bytes) + a 4-byte step counter per tensor; SGD: momentum buffer;
    8-bit AdamW: m and v in 1 byte each + one fp32 absmax per 2048-value block (+ 2 code books)."""
    n = trainable_params(arch, setup)
    b = trainable_bytes_per_param(setup)
    tensors = trainable_tensors(arch, setup)
    if setup.optimizer == "adamw":
        return 2 * n * b + 4 * tensors
    if setup.optimizer == "sgd":
        return n * b if setup.momentum > 0 else 0
    return _adamw8bit_bytes(arch, setup)


def _adamw8bit_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """bitsandbytes: tensors under 4096 values keep fp32 m, v; larger ones uint8 m, v plus one fp32
    absmax per 256-value block, and the two 256-entry fp32 code books (shared by all tensors)."""
    total, any_8bit = 0, False
    for numel in _trainable_numels(arch, setup):
        if numel < 4096:
            total += 2 * numel * 4
        else:
            any_8bit = True
            total += 2 * numel + 2 * math.ceil(numel / 256) * 4
    return total + (2 * 256 * 4 if any_8bit else 0)


def _trainable_numels(arch: ArchInfo, setup: MemorySetup) -> list[int]:
    if setup.method == "full":
        return list(arch.param_numels)
    out = []
    for lin in arch.linears_matching(setup.lora.targets_for(arch.model_type)):
        out += [setup.rank * lin.fan_in, setup.rank * lin.fan_out] * arch.layers
    return out


# ---------------------------------------------------------------------------------------------
# Activations: what autograd saves, op by op
# ---------------------------------------------------------------------------------------------
@dataclass
class Inventory:
    """Saved tensors by name (deduplicated by key, like storages)."""

    items: dict[str, int] = field(default_factory=dict)

    def save(self, key: str, nbytes: float) -> None:
        self.items.setdefault(key, int(nbytes))

    def total(self, prefix: str = "") -> int:
        return sum(v for k, v in self.items.items() if k.startswith(prefix))


def linear_out_bytes(setup: MemorySetup) -> int:
    """Bytes per element of a linear layer's output: half in half precision and under autocast — except
    bitsandbytes' 4-bit layers, which cast back to their (fp32) input's dtype."""
    half = setup.precision in ("fp16", "bf16")
    return 2 if (half or (setup.amp and setup.method != "qlora")) else 4


def stream_bytes(setup: MemorySetup) -> int:
    """Bytes per element of the residual stream (and a norm's output): half only in half precision — AMP
    and QLoRA keep it fp32."""
    return 2 if setup.precision in ("fp16", "bf16") else 4


def rope_out_bytes(setup: MemorySetup) -> int:
    """Bytes per element of q and k after RoPE: the projection's dtype, except under autocast, where a half
    projection times fp32 cos/sin promotes to fp32."""
    ob = linear_out_bytes(setup)
    return 4 if (setup.amp and ob == 2) else ob


def kv_cache_dtypes(setup: MemorySetup, rope: bool = True) -> tuple[int, int]:
    """Bytes per element of the K and V a KV cache built in training holds: k after RoPE (``rope=False``:
    GPT-2's plain k, the projection's dtype) and v as its projection returns it."""
    ob = linear_out_bytes(setup)
    return (rope_out_bytes(setup) if rope else ob), ob


class _Walk:
    """Walks a block's forward, recording what each op saves for backward."""

    def __init__(self, arch: ArchInfo, setup: MemorySetup, repeat_kv: bool = False, dense_mask: bool = False,
                 kv_cache: bool = False) -> None:
        self.a, self.s = arch, setup
        self.repeat_kv, self.dense_mask = repeat_kv, dense_mask  # the attention's route (see activation_inventory)
        self.kv_cache = kv_cache and not setup.checkpointing  # the forward builds a KV cache (checkpointing: none)
        self.inv = Inventory()
        self.tok = setup.batch * setup.seq
        self.stream = stream_bytes(setup)
        self.lin_out = linear_out_bytes(setup)
        self.amp = setup.amp
        self.full = setup.method == "full"
        self.qlora = setup.method == "qlora"
        self.targets = {lin.name for lin in arch.linears_matching(setup.lora.targets_for(arch.model_type))} \
            if not self.full else set()
        self.r = setup.rank
        self.cpu = setup.device == "cpu"
        self.req = self.full or setup.checkpointing  # does the residual stream need a gradient?

    # -- primitive rules ----------------------------------------------------------------------
    def linear(self, key: str, name: str, x_key: str, x_bytes: int, fan_in: int, fan_out: int,
               x_req: bool) -> bool:
        """y = x·Wᵀ (+ LoRA: + B(A(x))·α/r). Returns whether y needs a gradient."""
        w_train = self.full
        lora = name in self.targets
        if self.amp:  # autocast: a half copy of x (if x is fp32) and of W, per linear
            if w_train:
                self.inv.save(f"{key}.x_half" if x_bytes == 4 else x_key, self.tok * fan_in * 2)
            if x_req and not self.qlora:  # bnb's 4-bit matmul keeps only the packed weight
                self.inv.save(f"{key}.w_half", fan_in * fan_out * 2)
        elif w_train:
            self.inv.save(x_key, self.tok * fan_in * x_bytes)
        if lora:
            # peft casts x to the fp32 adapter dtype; autocast then makes a fresh half copy
            a_in = 2 if self.amp else 4
            same = not self.amp and x_bytes == 4
            if self.s.lora_dropout > 0:  # dropout on the fp32-cast x: a fresh tensor (+ a mask if x needs grad)
                if x_req:
                    self.inv.save(f"{key}.lora_drop_mask", self.tok * fan_in * (4 if self.cpu else 1))
                same = False
            self.inv.save(x_key if same else f"{key}.lora_x", self.tok * fan_in * a_in)
            self.inv.save(f"{key}.lora_a_out", self.tok * self.r * a_in)
            if self.amp:
                self.inv.save(f"{key}.lora_b_half", self.r * fan_out * 2)
                if x_req:
                    self.inv.save(f"{key}.lora_a_half", self.r * fan_in * 2)
        return x_req or w_train or lora

    def rmsnorm(self, key: str, x_key: str, x_bytes: int, x_req: bool, gemma: bool = False) -> None:
        """x.float(); pow/mean → rsqrt; x·rsqrt; weight·normed (Gemma: ·(1 + weight))."""
        w_train = self.full
        if not (x_req or w_train):
            return
        h = self.a.hidden
        if x_req:
            self.inv.save(x_key if x_bytes == 4 else f"{key}.x_fp32", self.tok * h * 4)
            self.inv.save(f"{key}.rstd", self.tok * 4)
            if gemma:
                self.inv.save(f"{key}.one_plus_w", h * 4)
        if w_train:
            if gemma:
                self.inv.save(f"{key}.normed", self.tok * h * 4)
            else:
                self.inv.save(f"{key}.normed", self.tok * h * x_bytes)

    def layernorm(self, key: str, x_key: str, x_bytes: int, x_req: bool) -> None:
        """native_layer_norm keeps its input, the mean and 1/std (b·s·1 fp32 each)."""
        if not (x_req or self.full):
            return
        self.inv.save(x_key, self.tok * self.a.hidden * x_bytes)
        stat = x_bytes if self.cpu else 4  # CUDA keeps mean/rstd in fp32; CPU in the input dtype
        self.inv.save(f"{key}.mean", self.tok * stat)
        self.inv.save(f"{key}.rstd", self.tok * stat)

    def dropout(self, key: str, p: float, numel: int, x_bytes: int, req: bool) -> None:
        """Training-mode dropout keeps its mask: bool on CUDA, the input's dtype on CPU."""
        if p > 0 and req:
            self.inv.save(f"{key}.mask", numel * (x_bytes if self.cpu else 1))

    # -- attention ----------------------------------------------------------------------------
    def attention(self, key: str, q_key: str, k_key: str, v_key: str, v_storage: int, req: bool,
                  out_key: str, dropout: float = 0.0, softcap: bool = False, qkv_bytes: int = 4,
                  fused_views: bool = False) -> None:
        """SDPA (flash / memory-efficient) or eager attention."""
        if not req:
            return
        a, s, b = self.a, self.s, self.s.batch
        d, H, K = a.head_dim, a.heads, a.kv_heads
        qb = 2 if self.amp else qkv_bytes
        q = b * H * s.seq * d * qb
        kv = b * K * s.seq * d * qb
        eager = s.attn == "eager" or not a.sdpa_supported
        math_path = eager or (dropout > 0 and self.cpu)
        upcast = math_path and not eager and self.cpu and qb == 2
        if math_path and not eager and self.cpu:  # CPU's math SDPA upcasts half inputs to fp32
            qb = 4
            q, kv = b * H * s.seq * d * qb, b * K * s.seq * d * qb
        if not math_path:  # flash: q, k, v, out, logsumexp; GQA K/V stay at kv_heads
            if fused_views:  # q, k, v are views of one fused projection output: one storage
                self.inv.save(v_key, v_storage)
            elif self.repeat_kv and H > K:  # repeat_kv: K/V copied to every head; the kernel keeps the copies
                self.inv.save(q_key, q)
                self.inv.save(f"{key}.k_rep", b * H * s.seq * d * qb)
                self.inv.save(f"{key}.v_rep", b * H * s.seq * d * qb)
            else:
                self.inv.save(q_key, q)
                self.inv.save(k_key, kv)
                self.inv.save(v_key, v_storage)
            if self.dense_mask:  # the dense mask, converted to a float bias in the query's dtype at every call
                self.inv.save(f"{key}.mask_bias", b * s.seq * s.seq * qb)
            self.inv.save(out_key, q)
            self.inv.save(f"{key}.lse", b * H * s.seq * 4)
            if dropout > 0:
                self.inv.save(f"{key}.rng", 16)
            return
        ss = b * H * s.seq * s.seq
        full_kv = b * H * s.seq * d * qb
        self.inv.save(q_key, q)
        self.inv.save(k_key if K == H else f"{key}.k_rep", full_kv)
        if fused_views:  # the math path makes v contiguous per head (with one row a view suffices)
            view = b == 1 and not upcast
            self.inv.save(v_key if view else f"{key}.v_math", v_storage if view else full_kv)
        else:
            self.inv.save(v_key if K == H else f"{key}.v_rep", full_kv if K != H else v_storage)
        if softcap:
            self.inv.save(f"{key}.tanh", ss * qb)
        self.inv.save(f"{key}.softmax", ss * (4 if eager else qb))
        if eager and qb == 2 and dropout == 0:  # the matmul keeps the half probabilities (with dropout:
            self.inv.save(f"{key}.probs_half", ss * 2)  # the mask and the dropped tensor below instead)
        if dropout > 0:
            self.inv.save(f"{key}.mask", ss * (qb if self.cpu else 1))
            self.inv.save(f"{key}.dropped", ss * qb)


def _block_llama(w: _Walk, l: int, fused: bool = False, gemma: bool = False) -> None:
    """Llama / Mistral / Qwen2 (and Phi-3 with fused qkv/gate_up, Gemma-2 with 4 norms)."""
    a, s = w.a, w.s
    h, i, d, H, K = a.hidden, a.intermediate, a.head_dim, a.heads, a.kv_heads
    sb, ob = w.stream, w.lin_out
    P = f"L{l}"
    x_req = w.req
    # input_layernorm → normed hidden (stream dtype; AMP: fp32 weight · fp32)
    w.rmsnorm(f"{P}.ln1", f"{P}.x", sb, x_req, gemma)
    n1 = f"{P}.ln1.out"
    if fused:
        qkv_req = w.linear(f"{P}.qkv", "self_attn.qkv_proj", n1, sb, h, (H + 2 * K) * d, x_req)
        q_req = k_req = v_req = qkv_req
        v_storage = w.tok * (H + 2 * K) * d * ob
        v_key = f"{P}.qkv_out"
        if w.amp and ob == 4:  # autocast casts the fp32 v slice to a fresh half tensor
            v_storage, v_key = w.tok * K * d * 2, f"{P}.v_half"
        elif w.kv_cache:  # the cache's contiguous copy of the v slice is what attention keeps
            v_storage, v_key = w.tok * K * d * ob, f"{P}.v_cache"
    else:
        q_req = w.linear(f"{P}.q", "self_attn.q_proj", n1, sb, h, H * d, x_req)
        k_req = w.linear(f"{P}.k", "self_attn.k_proj", n1, sb, h, K * d, x_req)
        v_req = w.linear(f"{P}.v", "self_attn.v_proj", n1, sb, h, K * d, x_req)
        v_storage = w.tok * K * d * ob
        v_key = f"{P}.v_out"
        if w.amp and ob == 4:
            v_storage, v_key = w.tok * K * d * 2, f"{P}.v_half"
    attn_req = q_req or k_req or v_req
    if q_req or k_req:  # RoPE: q·cos + rotate_half(q)·sin keeps cos and sin (shared by all layers)
        rope_b = 2 if s.precision in ("fp16", "bf16") else 4
        w.inv.save("rope.cos", s.seq * d * rope_b)
        w.inv.save("rope.sin", s.seq * d * rope_b)
    rope_out = rope_out_bytes(s)
    eager = s.attn == "eager" or not a.sdpa_supported
    w.attention(f"{P}.attn", f"{P}.q_rope", f"{P}.k_rope", v_key, v_storage, attn_req,
                f"{P}.attn_out", softcap=gemma and a.softcap_attn, qkv_bytes=rope_out if not w.amp else 2)
    # o_proj: flash writes its output already laid out as (b, s, heads·d): same storage, no copy
    o_in = f"{P}.attn_out" if not (eager or fused) else f"{P}.attn_merged"
    o_req = w.linear(f"{P}.o", "self_attn.o_proj", o_in, ob, H * d, h, attn_req)
    post_req = x_req or o_req
    if gemma:
        w.rmsnorm(f"{P}.ln_post_attn", f"{P}.o_out", ob, o_req, gemma)
        w.rmsnorm(f"{P}.ln_pre_ff", f"{P}.x2", sb, post_req, gemma)
    else:
        w.rmsnorm(f"{P}.ln2", f"{P}.x2", sb, post_req, gemma)
    n2 = f"{P}.ln2.out"
    if fused:
        gu_req = w.linear(f"{P}.gate_up", "mlp.gate_up_proj", n2, sb, h, 2 * i, post_req)
        g_req = u_req = gu_req
        gate_key = up_key = f"{P}.gate_up_out"
        gate_bytes = up_bytes = w.tok * 2 * i * ob
    else:
        g_req = w.linear(f"{P}.gate", "mlp.gate_proj", n2, sb, h, i, post_req)
        u_req = w.linear(f"{P}.up", "mlp.up_proj", n2, sb, h, i, post_req)
        gate_key, up_key = f"{P}.gate_out", f"{P}.up_out"
        gate_bytes = up_bytes = w.tok * i * ob
    if g_req or u_req:
        if g_req:
            w.inv.save(gate_key, gate_bytes)  # act(gate) keeps gate
        if u_req:
            w.inv.save(f"{P}.act_out", w.tok * i * ob)  # act(gate)·up keeps act(gate) (for d up)
        if g_req:
            w.inv.save(up_key, up_bytes)  # … and up (for d gate)
    w.linear(f"{P}.down", "mlp.down_proj", f"{P}.prod", ob, i, h, g_req or u_req)
    if gemma:
        w.rmsnorm(f"{P}.ln_post_ff", f"{P}.down_out", ob, g_req or u_req, gemma)
    w.req = True if (post_req or g_req or u_req) else w.req


def _block_gpt2(w: _Walk, l: int) -> None:
    """GPT-2: LayerNorm, Conv1D (transposed linear), GELU (tanh formula, 4 saved tensors), dropout."""
    a, s = w.a, w.s
    h, i = a.hidden, a.intermediate
    sb, ob = w.stream, w.lin_out
    P = f"L{l}"
    x_req = w.req
    w.layernorm(f"{P}.ln1", f"{P}.x", sb, x_req)
    qkv_req = w.linear(f"{P}.c_attn", "attn.c_attn", f"{P}.ln1.out", sb, h, 3 * h, x_req)
    p_attn, p_resid = a.dropout_attn, a.dropout_resid
    qkv_bytes = ob
    w.attention(f"{P}.attn", f"{P}.q", f"{P}.k", f"{P}.qkv_out", w.tok * 3 * h * ob, qkv_req,
                f"{P}.attn_out", dropout=p_attn, qkv_bytes=qkv_bytes, fused_views=True)
    eager = s.attn == "eager" or (p_attn > 0 and w.cpu)
    o_in = f"{P}.attn_merged" if eager else f"{P}.attn_out"
    o_bytes = 4 if (w.amp and eager and w.cpu and s.attn != "eager") else ob  # CPU autocast: SDPA in fp32
    o_req = w.linear(f"{P}.c_proj", "attn.c_proj", o_in, o_bytes, h, h, qkv_req)
    # bnb's 4-bit layer returns its input's dtype: under autocast the attention's output is half, so is c_proj's
    w.dropout(f"{P}.resid_drop1", p_resid, w.tok * h, 2 if (w.qlora and w.amp) else ob, o_req)
    req2 = x_req or o_req
    w.layernorm(f"{P}.ln2", f"{P}.x2", sb, req2)
    fc_req = w.linear(f"{P}.c_fc", "mlp.c_fc", f"{P}.ln2.out", sb, h, i, req2)
    if fc_req:  # 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))): keeps x, tanh, 0.5·x, 1 + tanh
        for name in ("x", "tanh", "half_x", "one_plus_tanh"):
            w.inv.save(f"{P}.gelu.{name}", w.tok * i * ob)
    p_req = w.linear(f"{P}.mlp_c_proj", "mlp.c_proj", f"{P}.gelu.prod", ob, i, h, fc_req)
    w.dropout(f"{P}.resid_drop2", p_resid, w.tok * h, ob, p_req)
    w.req = req2 or fc_req or p_req


def activation_inventory(arch: ArchInfo, setup: MemorySetup, repeat_kv: bool = False,
                         dense_mask: bool = False, kv_cache: bool = False) -> Inventory:
    """Every tensor autograd keeps for backward in one micro-batch (parameters excluded).

    The attention's route, where it is not the flash-style default (K/V at the key/value heads, no mask):
    ``repeat_kv`` — GQA's K/V repeated to every query head before the kernel, which keeps the copies
    (transformers' SDPA path when handed a mask; torchtune); ``dense_mask`` — SDPA handed a dense mask (a
    padded batch) converts it to a float bias at every call and keeps it (b·s² per layer; not on the math
    path), and GPT-2's checkpointed blocks keep the (b, 1, s, s) boolean mask itself, once. Measured on
    CPU with padded batches (``tests/test_memory_groundtruth.py``).
    ``kv_cache``: the forward builds transformers' KV cache (no checkpointing). Attention then gets the
    cache's ``torch.cat`` copies of k and v; that changes what is saved only for Phi-3, whose v was a view
    of the fused qkv output: attention keeps the cache's v copy instead and the fused output dies
    (the live-tensor tracker: the estimate was up to 8 % over without this).
    """
    if arch.family is None:
        raise NotImplementedError(f"no hand-written formula for {arch.model_type}; use trace_activations")
    w = _Walk(arch, setup, repeat_kv, dense_mask, kv_cache)
    tok, h = w.tok, arch.hidden
    if not setup.trains:
        return w.inv
    # embeddings: the lookup keeps its indices (int64) when the table trains
    if w.full:
        w.inv.save("embed.ids", tok * 8)
        if arch.family == "gpt2":
            w.inv.save("embed.pos_ids", setup.seq * 8)
    if arch.family == "gemma2" and w.req:
        w.inv.save("embed.normalizer", w.stream)  # hidden · √h keeps the 0-d √h tensor
    if arch.family == "gpt2":
        w.dropout("embed.drop", arch.dropout_embd, tok * h, w.stream, w.req)
    if setup.checkpointing:
        # Only each block's input survives the forward (the block is re-run during backward).
        for l in range(arch.layers):
            w.inv.save(f"L{l}.ckpt_in", tok * h * w.stream)
        if dense_mask and arch.family == "gpt2":  # GPT-2 hands its blocks the mask positionally: saved once
            w.inv.save("attn_mask", setup.batch * setup.seq * setup.seq)
        w.req = True
    else:
        for l in range(arch.layers):
            if arch.family == "gpt2":
                _block_gpt2(w, l)
            else:
                _block_llama(w, l, fused=arch.family == "phi3", gemma=arch.family == "gemma2")
    # final norm + LM head
    if arch.family == "gpt2":
        w.layernorm("final_norm", f"L{arch.layers}.x", w.stream, w.req)
    else:
        w.rmsnorm("final_norm", f"L{arch.layers}.x", w.stream, w.req, gemma=arch.family == "gemma2")
    head_train = w.full
    if head_train:
        w.inv.save("head.x_half" if w.amp else "final_norm.out", tok * h * (2 if w.amp else w.stream))
    if w.amp and w.req:
        w.inv.save("head.w_half", arch.vocab * h * 2)
    return w.inv


def logits_bytes(arch: ArchInfo, setup: MemorySetup) -> dict[str, int]:
    """The loss head: log_softmax keeps (b·s, V) fp32; Gemma-2's softcap keeps tanh(logits/c).
    Inference (generate): only the last position's logits, b·V in the model's dtype."""
    if not setup.trains:
        half = setup.precision in ("fp16", "bf16") or setup.amp
        return {"last_token_logits": setup.batch * arch.vocab * (2 if half else 4)}
    tok, V = setup.batch * setup.seq, arch.vocab
    # shifted labels: a contiguous copy — or, with one row, a view of the padded (s + 1) labels
    targets = tok * 8 if setup.batch > 1 else (setup.seq + 1) * 8
    out = {"log_softmax_fp32": tok * V * 4, "targets_int64": targets, "total_weight": 4}
    if arch.family == "gemma2" and arch.softcap_final:
        half = setup.precision in ("fp16", "bf16") or setup.amp
        out["softcap_tanh"] = tok * V * (2 if half else 4)
    return out


def logits_live_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """Transient at the end of forward: the logits tensor itself (+ its fp32 upcast if half)."""
    tok, V = setup.batch * setup.seq, arch.vocab
    half = setup.precision in ("fp16", "bf16") or setup.amp
    return tok * V * (2 + 4 if half else 4)


def kv_cache_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """2 (K and V) · layers · kv_heads · head_dim · tokens · bytes — GQA divides it by heads/kv_heads."""
    if setup.trains:
        return 0
    b = BYTES[setup.compute] if setup.compute in BYTES else 4
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * setup.batch * (setup.seq + setup.gen_len) * b


def korthikanti_bytes(arch: ArchInfo, setup: MemorySetup) -> int:
    """The classic s·b·h·(34 + 5·a·s/h) per layer (GPT-3 blocks, fp16, no flash) — for comparison."""
    s, b, h, a = setup.seq, setup.batch, arch.hidden, arch.heads
    return int(arch.layers * s * b * h * (34 + 5 * a * s / h))
