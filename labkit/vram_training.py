"""Training memory from what autograd keeps: labkit.vram.estimate_training's model of one step.

Every number below was read off a tensor-by-tensor trace (labkit.vram_measure.TensorMemoryTracker and
torch.autograd.graph.saved_tensors_hooks) of tiny configs on the CPU; docs/vram_model.md lists them with the
measurement behind each, and tests/test_vram.py checks the whole estimate against the tracker for every family
(full fine-tuning, LoRA; with and without checkpointing).

The peak of a step is the largest of a few moments:
- the start of the backward pass: every tensor the forward pass saved for backward (per layer, plus the final
  norm and the loss), and the loss's backward temporaries (log-softmax's saved float32 output, the gradient
  nll_loss hands back and the one log-softmax returns: 12 bytes per token per vocabulary entry in all). The
  gradients are not allocated yet: zero_grad(set_to_none=True) freed them after the last step;
- a layer's backward, beyond what it saved (and, in full fine-tuning, with the gradients made so far);
- the optimizer step: every gradient, and AdamW's temporaries (on a GPU torch runs the "foreach" AdamW, which
  makes one sqrt(v) the size of all its states at once; on a CPU one parameter at a time).
With gradient checkpointing each layer keeps only its input, and the backward pass re-runs one layer at a time:
the peak is the larger of the loss's backward and one re-run layer with its backward temporaries.
A model type without a formula has its step traced on the meta device instead (labkit.vram_trace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .architecture import Architecture, WeightTensor, architecture, parameter_count, weight_tensors
from .dtypes import BITS_PER_WEIGHT
from .errors import unknown
from .vram_trace import lora_trainable_parameters, trace_training_step

# peft 0.21 + transformers 5: for the mixture-of-experts model types transformers re-lays out from their v4
# checkpoints (transformers.conversion_mapping), LoRA targets named after the v4 expert projections and the
# router are moved onto the experts' stacked 3-D weights and the router's weight (peft's ParamWrapper); the
# fused gate_up weight gets twice the rank. A Linear layer of that short name elsewhere (a dense MLP, a shared
# expert) then gets no adapter. (Read from peft when it is installed; this copy is the fallback.)
PEFT_EXPERT_TARGETS = {
    "mixtral": {"gate": "gate.weight", "w1": "gate_up_proj", "w3": "gate_up_proj", "w2": "down_proj"},
    "qwen2_moe": {"gate": "gate.weight", "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj",
                  "down_proj": "down_proj"},
}
GEMMA_NORM = ("gemma2", "gemma3", "gemma3_text")  # four norms per layer, (1 + weight) * x in float32
FP32_NORM_WEIGHT = (*GEMMA_NORM, "olmo2", "gpt_oss")  # the norm's weight multiplies in float32, then the cast


@dataclass(frozen=True)
class LoraTargets:
    """Which weights LoRA adapts, as peft adapts them: nn.Linear modules by short name, and (for the
    mixture-of-experts types peft converts) the experts' stacked weights and the router."""

    linear: tuple[WeightTensor, ...]
    expert_weights: tuple[str, ...] = ()  # "gate_up_proj", "down_proj", "gate.weight"
    trainable: int = 0

    @property
    def names(self) -> set[str]:
        return {t.name.split(".")[-1] for t in self.linear}


def _peft_expert_mapping(model_type: str) -> dict[str, str]:
    try:
        from peft.utils.transformers_weight_conversion import (
            _MODEL_TO_CONVERSION_PATTERN,
            _MOE_TARGET_MODULE_MAPPING,
        )
    except Exception:  # peft missing or reorganised: the copy above (peft 0.21.2)
        from transformers.conversion_mapping import _MODEL_TO_CONVERSION_PATTERN

        _MODEL_TO_CONVERSION_PATTERN = {**_MODEL_TO_CONVERSION_PATTERN, "mixtral": "mixtral"}
        _MOE_TARGET_MODULE_MAPPING = PEFT_EXPERT_TARGETS
    return dict(_MOE_TARGET_MODULE_MAPPING.get(_MODEL_TO_CONVERSION_PATTERN.get(model_type, ""), {}))


def lora_targets(model: Any, rank: int = 16, target_modules: str | tuple[str, ...] | list[str] = "all-linear") -> LoraTargets:
    """The weights peft's LoRA adapts for `target_modules` ("all-linear": every nn.Linear but the output
    head), and its trainable parameters: r x (in + out) per adapted matrix."""
    a = architecture(model)
    linear = [t for t in weight_tensors(a) if t.kind == "linear"]
    names = {t.name.split(".")[-1] for t in linear}
    mapping = _peft_expert_mapping(a.model_type) if a.is_moe else {}
    if target_modules == "all-linear":
        wanted = names | set(mapping)
    else:
        wanted = {target_modules} if isinstance(target_modules, str) else set(target_modules)
        missing = wanted - names - set(mapping)
        if missing:
            raise unknown("LoRA target module", sorted(missing)[0], sorted(names) + ["all-linear"])
    converted = {k for k in wanted if k in mapping}
    chosen = tuple(t for t in linear if t.name.split(".")[-1] in wanted - converted)
    trainable = sum(rank * (t.shape[0] + t.shape[1]) * t.count for t in chosen)
    experts = tuple(sorted({mapping[k] for k in converted}))
    moe = a.layer_kinds().count("moe")
    e, ei, h = a.num_experts, a.expert_intermediate, a.hidden_size
    if "gate_up_proj" in experts:  # (E, 2 ei, h), rank doubled: the fused gate and up each keep r
        trainable += moe * 2 * rank * e * (h + 2 * ei)
    if "down_proj" in experts:  # (E, h, ei)
        trainable += moe * rank * e * (ei + h)
    if "gate.weight" in experts:  # the router (E, h)
        trainable += moe * rank * (h + e)
    return LoraTargets(chosen, experts, trainable)


@dataclass(frozen=True)
class _Step:
    """How one training step runs, as far as memory goes."""

    method: str  # full, lora, qlora
    e: float  # bytes of one value in the training dtype
    autocast: bool  # full fine-tuning in mixed precision: an fp32 model under torch.autocast(16-bit)
    adapted: frozenset = frozenset()  # short names of the nn.Linear modules LoRA wraps
    expert_adapters: tuple[str, ...] = ()
    rank: int = 0
    device: str = "cuda"
    attention: str = "sdpa"

    @property
    def full(self) -> bool:
        return self.method == "full"

    @property
    def mm(self) -> float:  # what a matrix product outputs: the autocast dtype, else the training dtype
        return 2.0 if self.autocast else self.e

    @property
    def stream(self) -> float:  # the residual stream and the norms' outputs: float32 under autocast
        return 4.0 if self.autocast else self.e


def _layer_linears(a: Architecture, kind: str) -> list[tuple[str, str, int]]:
    """(module short name, the tensor it reads, that tensor's width) for the nn.Linear layers of one layer."""
    h, o = a.hidden_size, a.num_heads * a.v_head_dim
    if a.is_mla:
        attn = [("kv_a_proj_with_mqa", "attention input", h), ("kv_b_proj", "normalized KV latent", a.kv_lora_rank)]
        attn += ([("q_a_proj", "attention input", h), ("q_b_proj", "normalized query latent", a.q_lora_rank)]
                 if a.q_lora_rank else [("q_proj", "attention input", h)])
    elif a.fused_projections:
        attn = [("qkv_proj", "attention input", h)]
    else:
        attn = [(n, "attention input", h) for n in ("q_proj", "k_proj", "v_proj")]
    attn.append(("o_proj", "attention output", o))
    if kind == "dense":
        i = a.intermediate_size
        mlp = ([("gate_up_proj", "MLP input", h)] if a.fused_projections else
               [("gate_proj", "MLP input", h), ("up_proj", "MLP input", h)])
        mlp.append(("down_proj", "act(gate) x up", i))
    else:
        mlp = []
        if a.shared_expert_intermediate:
            mlp = [("gate_proj", "MLP input", h), ("up_proj", "MLP input", h),
                   ("down_proj", "shared expert act(gate) x up", a.shared_expert_intermediate)]
        if a.shared_expert_gate:
            mlp.append(("shared_expert_gate", "MLP input", h))
    return attn + mlp


def _layer_saved(a: Architecture, s: _Step, index: int, T: int, batch: int, seq_len: int) -> dict[str, float]:
    """Bytes one decoder layer keeps for the backward pass (T tokens in the batch)."""
    h, H, Hkv, hd, vhd = a.hidden_size, a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim
    Q, K, V, Out = H * hd, Hkv * hd, Hkv * vhd, H * vhd
    kind, sliding = a.layer_kinds()[index], a.layer_types[index] == "sliding"
    first_frozen = not s.full and index == 0  # LoRA: nothing before the first adapter needs a gradient
    out: dict[str, float] = {}

    def add(name: str, per_token: float) -> None:
        out[name] = out.get(name, 0.0) + T * per_token

    def norm(name: str, width: int, rows: int = 1) -> None:
        # RMSNorm computes in float32: x**2 keeps the float32 input, rsqrt its result (one per row); the
        # weight's gradient needs the normalized input too (float32 in Gemma's (1 + w) form)
        add(name, 4 * width + 4 * rows)
        if s.full:
            add(name, width * (4 if a.model_type in FP32_NORM_WEIGHT else s.stream))

    n_norms = 4 if a.model_type in GEMMA_NORM else 2
    for j in range(n_norms):
        if j == 0 and first_frozen and not a.norm_after:
            continue
        # the norms after the attention run backward before it (with the MLP)
        norm("MLP side: norms (float32 input and statistics)" if j else "norms (float32 input and statistics)", h)
    if a.qk_norm:
        rows = (H, Hkv) if a.qk_norm == "head" else (1, 1)
        if not first_frozen or {"q_proj", "k_proj"} & s.adapted:
            norm("q/k norms", Q, rows[0])
            norm("q/k norms", K, rows[1])
    if a.is_mla:
        norm("latent norms", a.kv_lora_rank)
        if a.q_lora_rank:
            norm("latent norms", a.q_lora_rank)

    # the inputs of the matrices: what a weight's (or an adapter's) gradient needs
    eager = s.attention == "eager"
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, source, width in _layer_linears(a, kind):
        groups.setdefault(source, []).append((name, width))
    for source, modules in groups.items():
        width = modules[0][1]
        side = "MLP side: " if source in ("MLP input", "act(gate) x up", "shared expert act(gate) x up") else ""
        sixteen_bit = source in ("attention output", "act(gate) x up", "shared expert act(gate) x up")
        shared = source == "attention output" and not eager and not (a.is_mla and s.device == "cpu")
        if s.full:
            if s.autocast and not sixteen_bit:  # autocast casts the float32 input once per matrix
                add(side + "matrix inputs (autocast's 16-bit copies)", len(modules) * 2 * width)
            elif not shared:
                add(side + "matrix inputs", width * s.mm if sixteen_bit else width * s.stream)
            continue
        adapted = [m for m in modules if m[0] in s.adapted]
        if not adapted:
            continue
        if s.e != 4:  # peft casts each adapter's input to the adapters' float32
            add(side + "LoRA: float32 copies of the adapted layers' inputs", len(adapted) * 4 * width)
        elif not shared:
            add(side + "matrix inputs", width * 4)
        add(side + "LoRA: adapter A outputs", len(adapted) * 4 * s.rank)

    # attention
    es = s.mm
    mask_here = sliding and seq_len > (a.sliding_window or 0)
    if a.is_mla and s.device == "cpu":  # CPU SDPA has no kernel for a value width other than the key's: the
        # math path, in float32, keeps the scores' softmax
        add("attention (SDPA math path, float32)", 4 * (Q + H * hd + H * vhd) + 4 * H * seq_len)
    elif eager:
        add("attention: q, and k, v repeated to every head", es * (Q + H * hd + H * vhd))
        if a.attention_sinks:  # GPT-OSS: the softmax over the scores and the sink (float32 under autocast,
            # whose fp32 sinks promote the scores; its 16-bit copy then feeds the product with v)
            add("attention: softmax with the sink column", H * (seq_len + 1) * (4 if s.autocast else es) + 8 * H
                + (es * H * seq_len if s.autocast else 0))
        else:
            scores = 4 * H * seq_len + (0 if es == 4 else es * H * seq_len)  # float32 softmax, its 16-bit copy
            if a.model_type == "gemma2":  # soft-capping keeps tanh's output
                scores += es * H * seq_len
            add("attention: scores (eager)", scores)
    else:
        gqa_native = not mask_here and hd == vhd <= 256
        kv = K + V if gqa_native else H * (hd + vhd)
        add("attention: q, k, v, output (SDPA)", es * (Q + kv + Out))
        add("attention: log-sum-exp (float32)", 4 * H)
        if mask_here:  # the kernel turns the boolean mask into the query's dtype and keeps it
            add("attention: mask in the query dtype", seq_len * es)

    # MLP
    if kind == "dense":
        add("MLP: gate, act(gate), up", 3 * a.intermediate_size * s.mm)
    else:
        add_moe = _moe_saved(a, s)
        for k_, v_ in add_moe.items():
            add(k_, v_)
    return out


def _moe_saved(a: Architecture, s: _Step) -> dict[str, float]:
    """Per token: what a mixture-of-experts block (transformers' grouped_mm experts) keeps for backward."""
    h, k, ei, E = a.hidden_size, a.experts_per_token, a.expert_intermediate, a.num_experts
    ex = 4.0 if s.autocast else s.e  # grouped_mm runs in the experts' dtype (float32 under autocast)
    experts_trainable = s.full or bool(s.expert_adapters)
    router_trainable = s.full or "gate.weight" in s.expert_adapters
    per_pair = 2 * ei * ex + ei * ex + h * ex  # gate_up output (act reads a view of it), act(gate), expert output
    if a.expert_bias:  # GPT-OSS: clamped gate and up, sigmoid, glu and up + 1
        per_pair += 3 * ei * ex
    if experts_trainable:
        per_pair += h * ex + ei * ex  # the gathered inputs, act(gate) x up
    # the routing weight, the sort's indices (and the expert biases' gather, when they train)
    per_pair += (4 if a.router_weights_fp32 else s.mm) + 8 * (3 + (a.expert_bias and experts_trainable))
    out = {"experts (per token and chosen expert)": k * per_pair}
    router = 8 * k + (s.mm * k if a.attention_sinks else 4 * E)  # top-k indices, the softmax (float32)
    if router_trainable:  # the router's input (DeepSeek's router computes in float32; autocast casts it)
        router += 4 * h if a.router_weights_fp32 and a.is_mla else (2 * h if s.autocast else h * s.stream)
    if a.model_type == "mixtral":
        router += 4 + 4 * k
    out["router"] = router
    if a.shared_expert_intermediate:
        out["shared expert: gate, act(gate), up"] = 3 * a.shared_expert_intermediate * s.mm
    if a.shared_expert_gate:
        out["shared expert output (gated)"] = h * s.mm
    return out


def _expert_adapter_saved(a: Architecture, s: _Step) -> float:
    """peft's ParamWrapper adds B @ A to the experts' weights on every forward: the merged weights of every
    MoE layer stay alive for the backward pass, in the training dtype."""
    if not s.expert_adapters:
        return 0.0
    e, ei, h = a.num_experts, a.expert_intermediate, a.hidden_size
    per_layer = 0.0
    if "gate_up_proj" in s.expert_adapters:
        per_layer += e * 2 * ei * h + 2 * s.rank * e * (h + 2 * ei)
    if "down_proj" in s.expert_adapters:
        per_layer += e * ei * h + s.rank * e * (ei + h)
    if "gate.weight" in s.expert_adapters:
        per_layer += e * h
    return a.layer_kinds().count("moe") * per_layer * s.e


def _layer_backward(a: Architecture, s: _Step, kind: str, saved: dict[str, float], T: int, seq_len: int) -> float:
    """The most one layer holds while it runs backward, beyond what it saved: first its MLP (three N x
    intermediate gradients, and for LoRA the float32 gradient of an adapted projection's output), then its
    attention, once the MLP's saved tensors are freed (eager attention: the scores' gradients, in float32)."""
    h, H = a.hidden_size, a.num_heads
    width = a.intermediate_size if kind == "dense" else a.experts_per_token * a.expert_intermediate
    mlp = 3 * width * s.mm + h * s.mm
    if not s.full and kind == "dense" and s.adapted & {"gate_proj", "up_proj", "gate_up_proj"}:
        out_width = 2 * width if a.fused_projections else width
        mlp = max(mlp, out_width * (s.mm + 4) + width * s.mm)
    deq = 0.0
    if s.method == "qlora":  # bitsandbytes de-quantizes the weight again to get its input's gradient
        deq = max((t.shape[0] * t.shape[1] for t in weight_tensors(a) if t.kind == "linear"), default=0) * s.e
    freed = sum(v for k, v in saved.items() if k.startswith(("MLP", "experts", "router", "shared")))

    Q, o = H * a.head_dim, H * a.v_head_dim
    if s.attention == "eager" or (a.is_mla and s.device == "cpu"):
        attention = H * seq_len * (8 if a.is_mla or s.mm == 4 else 1.5 * s.mm + 4)
        if a.attention_sinks:
            attention = H * (seq_len + 1) * (s.mm + 4)
    else:
        attention = s.mm * (o + Q + H * (a.head_dim + a.v_head_dim)) + (4 * Q if s.device == "cuda" else 0)
    whole = sum(saved.values())
    return max(whole + T * mlp, whole - freed + T * attention) + deq


def _training_moments(a: Architecture, s: _Step, seq_len: int, batch: int, checkpointing: bool,
                      grad_bytes: float, gradients: float) -> dict[str, dict[str, float]]:
    """The candidate peaks of a step's backward pass, each as {what: bytes}; "gradients so far" are the
    gradients already allocated at that moment (see the section's comment)."""
    T = seq_len * batch
    h, L, Vocab = a.hidden_size, a.num_layers, a.vocab_size
    tensors = weight_tensors(a)
    fp32_norm = a.model_type in FP32_NORM_WEIGHT
    fixed: dict[str, float] = {}
    fixed["final norm (float32 input and statistics)"] = T * (4 * h + 4 + ((4 if fp32_norm else s.stream) * h if s.full else 0))
    if s.full:
        fixed["output head input"] = T * h * (2 if s.autocast else s.e)
        fixed["token ids (embedding gradient)"] = T * 8
    if a.model_type == "gemma2":  # final logit soft-capping keeps tanh's output
        fixed["logits soft-capping (tanh output)"] = T * Vocab * s.mm
    fixed["loss: float32 log-softmax and labels"] = T * (4 * Vocab + 8)
    always = {"RoPE cos/sin": (T * a.rotary_dim // 2 * 8 if a.is_mla else a.rotary_sets * 2 * T * a.rotary_dim * s.stream)}
    layer_copies = 0.0
    if s.autocast:  # autocast's 16-bit copy of every matrix, kept by the products for backward (checkpointed:
        # the output head's, and one layer's while it is re-run)
        head_copy = sum(t.numel for t in tensors if t.kind == ("embedding" if a.tied_embeddings else "lm_head"))
        layer_copies = 2.0 * sum(t.numel for t in tensors if t.kind in ("linear", "router")) / L
        always["autocast's 16-bit copies of the weights"] = 2.0 * head_copy + (0 if checkpointing else L * layer_copies)
    loss_backward = {"loss backward: float32 gradients of the logits": T * 8 * Vocab}
    kinds = a.layer_kinds()
    saved = [_layer_saved(a, s, i, T, batch, seq_len) for i in range(L)]
    merged = _expert_adapter_saved(a, s)  # every MoE layer's (a checkpointed step re-makes one at a time)
    per_moe = merged / max(kinds.count("moe"), 1)
    head_grads = layer_grads = 0.0
    if s.full:  # the output head's (and final norm's) gradients come first, then one layer's after another
        head = sum(t.numel for t in tensors if t.kind == ("embedding" if a.tied_embeddings else "lm_head")) + h
        embedding = 0 if a.tied_embeddings else sum(t.numel for t in tensors if t.kind == "embedding")
        head_grads = head * grad_bytes
        layer_grads = max(0.0, gradients - head_grads - embedding * grad_bytes) / L
    moments: dict[str, dict[str, float]] = {}
    if not checkpointing:
        layers: dict[str, float] = {}
        for one in saved:
            for k_, v_ in one.items():
                layers[k_] = layers.get(k_, 0.0) + v_
        per_layer = {f"per layer: {k_}": v_ for k_, v_ in layers.items()}
        if merged:
            per_layer["LoRA: merged expert weights (peft ParamWrapper), every MoE layer"] = merged
        moments["start of backward"] = {**per_layer, **always, **fixed, **loss_backward}
        if s.attention == "eager":  # the last layer's eager attention, forward: the scores before softmax
            mlp_side = sum(v_ for k_, v_ in saved[-1].items() if k_.startswith(("MLP", "experts", "router", "shared")))
            before = sum(sum(one.values()) for one in saved) - mlp_side
            scores = T * a.num_heads * (seq_len + 1) * s.mm * (2 if a.attention_sinks else 1)
            moments["last layer's attention (forward)"] = {"saved so far": before, **always, "attention scores": scores}
        last = _layer_backward(a, s, kinds[-1], saved[-1], T, seq_len) - sum(saved[-1].values())
        moments["last layer's backward"] = {**per_layer, **always, "backward temporaries of one layer": last,
                                            "gradients so far": head_grads}
        if s.full:  # the gradients grow as the saved tensors are freed: the first layer's backward
            first = _layer_backward(a, s, kinds[0], saved[0], T, seq_len)
            moments["first layer's backward"] = {**always, "first layer's saved tensors and backward": first,
                                                 "gradients so far": head_grads + L * layer_grads}
        return moments
    inputs = {"layer inputs (checkpointed)": L * T * h * s.stream}
    moments["loss backward"] = {**inputs, **always, **fixed, **loss_backward}
    for where, i in (("last", L - 1), ("first", 0)):
        if where == "first" and not s.full:
            continue
        rerun = _layer_backward(a, s, kinds[i], saved[i], T, seq_len) + layer_copies
        if merged and kinds[i] == "moe":
            rerun += per_moe
        moments[f"re-run of the {where} layer"] = {
            "layer inputs (checkpointed)": (i + 1) * T * h * s.stream, **always,
            f"the {where} layer re-run and its backward": rerun,
            "gradients so far": head_grads + (L - 1 - i) * layer_grads}
    return moments


def _generic_training_moments(a: Architecture, s: _Step, method: str, dtype: str, rank: int, targets: Any,
                              seq_len: int, batch: int, checkpointing: bool, device: str,
                              formula: dict[str, dict[str, float]], notes: list[str]) -> tuple[dict[str, dict[str, float]], str]:
    """A model type without a formula: its training step traced on the meta device. Returns the moments and, when
    the standard-decoder formula had to stand in (mixed precision: autocast does not run on the meta device), the
    kind of estimate that makes (labkit.vram_band.GENERIC_BANDS). A loop over routed experts raises DataDependent."""
    if s.autocast:
        return formula, "training, mixed precision (standard decoder)"
    key = targets if isinstance(targets, str) else tuple(sorted(targets))
    peak, top = trace_training_step(a.config_json, method, dtype, rank, key, seq_len, batch, checkpointing, device)
    moment = {f"traced on the meta device: made by {op}": size for op, size in top}
    moment["traced on the meta device: the rest"] = peak - sum(size for _, size in top)
    if method == "qlora":  # bitsandbytes de-quantizes a weight again for its input's gradient
        moment["bitsandbytes: a de-quantized weight"] = max(
            (t.shape[0] * t.shape[1] for t in weight_tensors(a) if t.kind == "linear"), default=0) * s.e
    notes.append(f"{a.model_type}: no formula for this model type; the forward and backward passes were traced on "
                 "the meta device (every tensor autograd keeps, shapes only)")
    return {"forward and backward (traced)": moment}, "training (traced)"


def _adamw_step_temporary(total: float, largest: float, state_bytes: float, device: str, optimizer: str) -> float:
    """AdamW's step temporaries: torch's foreach implementation (its default on a GPU) computes sqrt(v) for
    every parameter at once; the per-parameter one (its default on a CPU) two temporaries of the largest."""
    if optimizer != "adamw":
        return 0.0
    return total * state_bytes if device == "cuda" else 2 * largest * state_bytes


@dataclass
class StepMemory:
    """One training step's peak, by part (bytes), as `step_memory` finds it."""

    weights: float
    gradients: float  # allocated at the peak
    optimizer_states: float
    activations: float
    details: dict[str, float]
    notes: list[str]
    trainable: int
    autocast: bool
    kind: str = ""  # for a model type without a formula: how the estimate was made (labkit.vram_band.GENERIC_BANDS)


def step_memory(a: Architecture, method: str, dtype: str, optimizer: str, lora_rank: int, target_modules: Any,
                seq_len: int, batch: int, gradient_checkpointing: bool, mixed_precision: bool, device: str,
                attention: str | None, nf4_base: float = 0.0) -> StepMemory:
    """The peak of one training step (see the module's docstring); labkit.vram.estimate_training checks the
    inputs and turns this into a MemoryEstimate. `nf4_base`: the base's bytes in NF4 (QLoRA)."""
    params = parameter_count(a)
    e = BITS_PER_WEIGHT[dtype] / 8
    details: dict[str, float] = {}
    notes: list[str] = []
    autocast = method == "full" and mixed_precision and dtype != "fp32"
    if method == "full":
        master = 4.0 if autocast else e  # the bytes of a weight, of its gradient and of each AdamW moment
        weights = params * master
        gradients = params * master
        states = params * {"adamw": 2 * master, "adamw8bit": 2.0 + 2 * 4 / 256, "sgd": 0.0}[optimizer]
        largest = max(math.prod(t.shape) for t in weight_tensors(a))
        temp = _adamw_step_temporary(params, largest, master, device, optimizer)
        trainable = params
        details["weights: " + ("fp32, trained under autocast" if autocast else dtype)] = weights
        plan = None
        s = _Step("full", e, autocast, device=device, attention=attention or a.attention)
    else:
        plan = lora_targets(a, lora_rank, target_modules)
        trainable = plan.trainable
        if a.generic:
            # no formula: the layers' names are the model's own; peft on the meta device counts them
            key = target_modules if isinstance(target_modules, str) else tuple(sorted(target_modules))
            trainable = lora_trainable_parameters(a.config_json, lora_rank, key)
        base = nf4_base if method == "qlora" else params * e
        weights = base + trainable * 4
        gradients = trainable * 4
        states = trainable * {"adamw": 8.0, "adamw8bit": 2.0 + 2 * 4 / 256, "sgd": 0.0}[optimizer]
        largest = max([lora_rank * max(t.shape) for t in plan.linear] +
                      [2 * lora_rank * a.num_experts * max(a.hidden_size, 2 * a.expert_intermediate)
                       for _ in plan.expert_weights])
        temp = _adamw_step_temporary(trainable, largest, 4, device, optimizer)
        details.update({"weights: frozen base": base, "weights: adapters (fp32)": trainable * 4})
        where = ", ".join(sorted(plan.names) + [f"experts' {x}" for x in plan.expert_weights])
        notes.append(f"{trainable:,} trainable parameters ({trainable / params:.2%} of {params:,}) in: {where}")
        if plan.expert_weights:
            notes.append("peft adapts the experts' stacked weights of this mixture of experts and merges them "
                         "with the adapters on every forward pass (ParamWrapper): a merged copy of every MoE "
                         "layer's experts stays alive until backward.")
        s = _Step(method, e, False, frozenset(plan.names), plan.expert_weights, lora_rank, device,
                  attention or a.attention)
    grad_bytes = master if method == "full" else 4.0
    moments = _training_moments(a, s, seq_len, batch, gradient_checkpointing, grad_bytes, gradients)
    kind = ""
    if a.generic:
        moments, kind = _generic_training_moments(a, s, method, dtype, lora_rank, target_modules, seq_len, batch,
                                                  gradient_checkpointing, device, moments, notes)
    moments["optimizer step"] = {"gradients so far": gradients, "AdamW step temporaries": temp}
    when, peak = max(moments.items(), key=lambda m: sum(m[1].values()))
    grads_now = peak.get("gradients so far", 0.0)
    if when == "optimizer step":
        activations = 0.0
        states += temp
        details[f"optimizer: AdamW step temporaries ({'foreach' if device == 'cuda' else 'per tensor'})"] = temp
    else:
        activations = sum(v for k, v in peak.items() if k != "gradients so far")
        details.update({f"activations: {k}": v for k, v in peak.items() if v and k != "gradients so far"})
    notes.append(f"the peak is the {when}" + ("" if grads_now else ": no gradient is allocated yet"))
    details["gradients (all, at the optimizer step)"] = gradients
    return StepMemory(weights, grads_now, states, activations, details, notes, trainable, autocast, kind)
