"""The model's shape: what a config says about a decoder, and every weight tensor it has.

Five topics need the shape of a model (notebooks 01, 03, 04, 05, 07): the memory estimate prices it,
the catalog counts its parameters, the KV cache sizes it. It lives here, apart from what any of them
computes with it.

- `architecture(model)` reads an `Architecture` (layers, heads, KV heads, head sizes, sliding
  windows, experts, latent attention ...) from a shipped config name, a config dict or transformers
  config, a config.json path, or a Hub id (from the local cache offline). Models without attention
  (Mamba, RWKV), hybrids, non-causal models and configs missing a field the course needs raise a
  LabkitError that says what is wrong.
- `weight_tensors(model)` is the weight inventory: every tensor grouped by kind. For the model
  types in FORMULA_FAMILIES it comes from the formulas the course teaches (`formula_weight_tensors`),
  checked once against the model transformers builds on the meta device (`meta_weight_tensors`,
  shapes only, no memory); `weight_check(model)` says whether the two agree. Other causal LMs get
  the meta tensors.
- `parameter_count` and `active_parameter_count` sum the inventory.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import LabkitError, MissingPackageError, unknown
from .models import list_configs, load_config, to_transformers_config

# torch, transformers and huggingface_hub are imported inside the functions that need them: importing
# labkit stays quick (transformers alone takes seconds) and reading a shipped config needs none of them.

# ============================================================================ the architecture


@dataclass(frozen=True)
class Architecture:
    """The numbers of a config that decide memory. Read from a real config.json (see `architecture`)."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # query/key width per head
    v_head_dim: int  # value width per head (differs in MLA)
    vocab_size: int
    tied_embeddings: bool
    layer_types: tuple[str, ...]  # "full" or "sliding", one per layer
    sliding_window: int | None
    max_position: int
    attention: str  # what transformers runs by default: "sdpa" or "eager"
    fused_projections: bool = False  # Phi-3: one qkv_proj and one gate_up_proj
    attention_bias: bool = False
    qkv_bias: bool = False  # Qwen2: biases on q, k, v only
    mlp_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: str = ""  # RMSNorm on q and k: "head" (one per head width: Gemma 3, Qwen3), "full" (the whole
    #                    projection: OLMo 2, OLMoE)
    attention_sinks: bool = False  # GPT-OSS: one learned sink logit per head
    norm_after: bool = False  # OLMo 2 normalizes the outputs of attention and MLP, not their inputs
    unused_sliding_mask: bool = False  # Qwen2-MoE builds a sliding-window mask even when no layer uses it
    rotary_dim: int = 0
    rotary_sets: int = 1  # Gemma 3 keeps a global and a local RoPE
    # Mixture of experts (0 experts = dense)
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_expert_intermediate: int = 0
    shared_expert_gate: bool = False  # Qwen2-MoE: a sigmoid gate (one nn.Linear(hidden, 1)) on the shared expert
    router_bias: bool = False  # GPT-OSS
    expert_bias: bool = False  # GPT-OSS: a bias per expert on gate_up and down
    router_weights_fp32: bool = False  # Mixtral, DeepSeek: the routing weights stay float32 (others cast them back)
    dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek's first_k_dense_replace)
    mlp_kinds: tuple[str, ...] = ()  # per layer "dense" or "moe" when not just leading dense layers (Qwen-MoE)
    # No formula for this model type: the weights are read off the model built on the meta device, the
    # KV cache and activations are modelled as a standard decoder layer
    generic: bool = False
    config_json: str = field(default="", repr=False)  # the config it was read from (for the meta-device build)
    # Multi-head latent attention (DeepSeek-V2): the cache holds a compressed latent
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_dim: int = 0
    qk_nope_dim: int = 0
    cache_reset_tokens: int = 0  # Phi-3 re-runs the prompt when generation crosses this length

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def kv_grouping(self) -> str:
        if self.is_mla:
            return "MLA"
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else f"GQA ({self.num_heads // self.num_kv_heads} queries per KV head)"

    def layer_kinds(self) -> list[str]:
        """Per layer: 'moe' or 'dense' MLP."""
        if not self.is_moe:
            return ["dense"] * self.num_layers
        if self.mlp_kinds:
            return list(self.mlp_kinds)
        return ["dense" if i < self.dense_layers else "moe" for i in range(self.num_layers)]


def architecture(model: Any) -> Architecture:
    """The memory-relevant numbers of a model. `model` is any of:

    - a shipped config name ("llama-3.1-8b"; labkit.models.list_configs() lists them);
    - the path of a config.json, or of a folder holding one;
    - a Hugging Face Hub id ("Qwen/Qwen3-30B-A3B"): its config.json from your local Hub cache, or
      downloaded when you are online;
    - a config dict (what a config.json holds), a transformers config, or a loaded model.

    Anything else, a model type without attention (Mamba, RWKV), a config transformers cannot build
    or one missing a field the estimate needs raises a LabkitError that says what is wrong.
    """
    if isinstance(model, Architecture):
        return model
    if isinstance(model, os.PathLike):
        model = str(model)
    if isinstance(model, str):
        return _architecture_from_name(model)
    if isinstance(model, dict):
        return _architecture_from_json(json.dumps(model, sort_keys=True, default=str))
    to_dict = getattr(model, "to_dict", None)
    if callable(to_dict):  # a transformers PretrainedConfig
        data = to_dict()
        data.setdefault("model_type", getattr(model, "model_type", None))
        return _architecture_from_json(json.dumps(data, sort_keys=True, default=str), complete=True)
    config = getattr(model, "config", None)  # a loaded model
    if config is not None and callable(getattr(config, "to_dict", None)):
        return architecture(config)
    raise LabkitError(f"cannot read an architecture from {type(model).__name__}. Pass a shipped config name "
                      "(labkit.models.list_configs()), the path of a config.json, a Hub id like "
                      "'Qwen/Qwen3-30B-A3B', a config dict with 'model_type', or a transformers config.")


@lru_cache(maxsize=64)
def _architecture_from_name(name: str) -> Architecture:
    raw = read_config(name)
    path = Path(name).expanduser()
    if path.name == "config.json":
        name = path.parent.name
    elif path.suffix == ".json" or path.is_dir():
        name = path.stem
    return replace(_parse(raw), name=name)


@lru_cache(maxsize=256)
def _architecture_from_json(text: str, complete: bool = False) -> Architecture:
    return _parse(json.loads(text), complete=complete)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def read_config(model: str) -> dict:
    """The config dict behind a shipped name, a path (a config.json or its folder) or a Hub id."""
    if model in list_configs():
        return load_config(model)
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LabkitError(f"{path} is not a JSON config file ({err}). Pass a model's config.json.") from err
        if not isinstance(data, dict):
            raise LabkitError(f"{path} holds a JSON {type(data).__name__}, not a config object.")
        return data
    if path.suffix == ".json" or model.startswith((".", "~", os.sep)) or (os.sep in model and not HUB_ID.fullmatch(model)):
        raise LabkitError(f"no such config file: {path}. Pass the path of a model's config.json.")
    if HUB_ID.fullmatch(model):
        return _config_from_hub(model)
    raise unknown("model config", model, [*list_configs(), "<the path of a config.json>",
                                          "<a Hub id like 'Qwen/Qwen3-30B-A3B'>"])


def _hub_offline() -> bool:
    flags = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def _config_from_hub(repo_id: str) -> dict:
    """config.json of a Hub model: from the local Hugging Face cache, else downloaded (when online)."""
    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    except ImportError as err:
        raise MissingPackageError("huggingface_hub", f"Reading the config of {repo_id}") from err
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    how = (f"Download it once while online (labkit.models.precache(['{repo_id}']), or "
           f"`hf download {repo_id} config.json`), or pass the path of its config.json, or a shipped name "
           "(labkit.models.list_configs()).")
    if _hub_offline():
        raise LabkitError(f"{repo_id!r}: its config.json is not in your local Hugging Face cache ({cache}) and the "
                          f"Hub is switched off (HF_HUB_OFFLINE=1). {how}")
    try:
        return json.loads(Path(hf_hub_download(repo_id, "config.json", cache_dir=cache)).read_text())
    except Exception as err:  # offline, unknown repo, gated model: one clear message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LabkitError(f"could not get the config.json of {repo_id!r} from the Hub ({first}). Gated models "
                          f"(Llama, Gemma) need `hf auth login` and the licence accepted on the model page. {how}") from err


# Model types with no attention layer at all: their memory is weights plus a fixed-size recurrent state
NO_ATTENTION = {"mamba": "a state-space model (Mamba)", "mamba2": "a state-space model (Mamba-2)",
                "falcon_mamba": "a state-space model (Falcon Mamba)", "rwkv": "a recurrent model (RWKV)",
                "xlstm": "a recurrent model (xLSTM)"}
# Model types whose weights, KV cache and activations the formulas below model, layer by layer
FORMULA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "olmo2", "gemma2", "gemma3", "gemma3_text", "phi3",
                    "mixtral", "deepseek_v2", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "granitemoe")
REQUIRED_FIELDS = {"hidden_size": "the width of every tensor", "num_hidden_layers": "the number of layers",
                   "num_attention_heads": "the attention heads (KV cache, attention)",
                   "vocab_size": "the embedding and the logits"}


def _parse(raw: dict, complete: bool = False) -> Architecture:
    """Read an Architecture off a config dict. `complete`: the dict came from a transformers config
    (every field already filled in), so missing fields are not checked against the dict itself."""
    if not isinstance(raw, dict) or not raw.get("model_type"):
        raise LabkitError("a model config needs a 'model_type' field (like a Hub config.json).")
    model_type = raw["model_type"]
    if model_type in NO_ATTENTION:
        raise LabkitError(
            f"{model_type!r} is {NO_ATTENTION[model_type]}: it has no attention layers, so no KV cache; its memory "
            "is the weights plus a fixed-size state per sequence, which this estimator does not model. "
            f"labkit.vram models transformer decoders: {', '.join(FORMULA_FAMILIES)} with formulas, and any other "
            "causal LM that transformers can build from the weights it creates on the meta device.")
    cfg = to_transformers_config(raw)  # fills in the model type's defaults (e.g. tied embeddings)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    _refuse_layers_without_attention(model_type, text_cfg)
    _require_causal_lm(model_type)
    _require_fields(model_type, raw, text_cfg, complete)
    get = lambda key, default=None: getattr(text_cfg, key, default) if getattr(text_cfg, key, None) is not None else default  # noqa: E731
    hidden = int(get("hidden_size"))
    heads = int(get("num_attention_heads"))
    layers = int(get("num_hidden_layers"))
    kv_heads = int(get("num_key_value_heads", heads))
    head_dim = int(get("head_dim", hidden // heads))
    generic = model_type not in FORMULA_FAMILIES
    window = get("sliding_window")
    layer_types = get("layer_types")
    if layer_types:
        kinds = tuple("sliding" if "sliding" in t else "full" for t in layer_types[:layers])
    else:
        kinds = tuple(("sliding" if window else "full") for _ in range(layers))
    if "sliding" not in kinds:
        window = None
    fields: dict[str, Any] = dict(
        name=str(raw.get("_name_or_path") or model_type), model_type=model_type, hidden_size=hidden,
        intermediate_size=int(get("intermediate_size", 4 * hidden)), num_layers=layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim, vocab_size=int(get("vocab_size")),
        tied_embeddings=bool(get("tie_word_embeddings", False)), layer_types=kinds,
        sliding_window=int(window) if window else None, max_position=int(get("max_position_embeddings", 0) or 0),
        attention=_default_attention(model_type), attention_bias=bool(get("attention_bias", False)),
        mlp_bias=bool(get("mlp_bias", False)), rotary_dim=head_dim, generic=generic,
        config_json=json.dumps(raw, sort_keys=True, default=str),
    )
    if model_type == "qwen2":
        fields["qkv_bias"] = True
    if model_type == "qwen2_moe":
        fields["qkv_bias"] = bool(get("qkv_bias", True))
    if model_type == "phi3":
        fields["fused_projections"] = True
        fields["cache_reset_tokens"] = int(get("original_max_position_embeddings", 0) or 0)
    if model_type in ("gemma2", "gemma3", "gemma3_text"):
        fields["norms_per_layer"] = 4
    if model_type in ("gemma3", "gemma3_text"):
        fields["qk_norm"] = "head"
        fields["rotary_sets"] = 2
    if model_type in ("qwen3", "qwen3_moe"):
        fields["qk_norm"] = "head"
    if model_type in ("olmo2", "olmoe"):
        fields["qk_norm"] = "full"
    if model_type == "olmo2":
        fields["norm_after"] = True
    if model_type in ("mixtral", "granitemoe", "gpt_oss"):
        fields.update(num_experts=int(get("num_local_experts")), experts_per_token=int(get("num_experts_per_tok")),
                      expert_intermediate=fields["intermediate_size"])
    if model_type in ("mixtral", "deepseek_v2"):
        fields["router_weights_fp32"] = True
    if model_type == "gpt_oss":
        # (from_pretrained keeps its norms in float32, _keep_in_fp32_modules; 141,120 parameters in the
        # 20B, so the formula follows from_config, which builds them in the model's dtype)
        fields.update(router_bias=True, expert_bias=True, attention_sinks=True)
    if model_type == "olmoe":
        fields.update(num_experts=int(get("num_experts")), experts_per_token=int(get("num_experts_per_tok")),
                      expert_intermediate=fields["intermediate_size"])
    if model_type in ("qwen2_moe", "qwen3_moe") and int(get("num_experts", 0) or 0) > 0:
        step, only_dense = int(get("decoder_sparse_step", 1) or 1), set(get("mlp_only_layers", []) or [])
        fields.update(num_experts=int(get("num_experts")), experts_per_token=int(get("num_experts_per_tok")),
                      expert_intermediate=int(get("moe_intermediate_size")),
                      mlp_kinds=tuple("moe" if i not in only_dense and (i + 1) % step == 0 else "dense"
                                      for i in range(layers)))
        if model_type == "qwen2_moe":
            fields.update(shared_expert_intermediate=int(get("shared_expert_intermediate_size")),
                          shared_expert_gate=True)
    if model_type == "qwen2_moe":
        fields["unused_sliding_mask"] = "sliding" not in kinds
    if generic:  # no formula: read the experts' numbers where the usual fields are (the weights come from meta)
        experts = get("num_local_experts") or get("num_experts") or get("n_routed_experts")
        if isinstance(experts, int) and experts > 0 and get("num_experts_per_tok"):
            fields.update(num_experts=experts, experts_per_token=int(get("num_experts_per_tok")),
                          expert_intermediate=int(get("moe_intermediate_size", fields["intermediate_size"])))
    if model_type == "deepseek_v2":
        nope, rope, v = int(get("qk_nope_head_dim")), int(get("qk_rope_head_dim")), int(get("v_head_dim"))
        fields.update(
            head_dim=nope + rope, v_head_dim=v, num_kv_heads=heads, rotary_dim=rope,
            kv_lora_rank=int(get("kv_lora_rank")), q_lora_rank=int(get("q_lora_rank", 0) or 0),
            qk_rope_dim=rope, qk_nope_dim=nope,
        )
        if get("n_routed_experts"):
            moe_inter = int(get("moe_intermediate_size"))
            fields.update(num_experts=int(get("n_routed_experts")), experts_per_token=int(get("num_experts_per_tok")),
                          expert_intermediate=moe_inter,
                          shared_expert_intermediate=moe_inter * int(get("n_shared_experts", 0) or 0),
                          dense_layers=int(get("first_k_dense_replace", 0) or 0))
    return Architecture(**fields)


# Hybrids whose state-space or convolution layers may not show in a per-layer list
HYBRIDS = ("jamba", "bamba", "zamba", "zamba2", "falcon_h1", "granitemoehybrid", "nemotron_h", "qwen3_next", "lfm2",
           "lfm2_moe", "recurrent_gemma")


def _refuse_layers_without_attention(model_type: str, cfg: Any) -> None:
    """Hybrids (Jamba, Zamba, Bamba, Qwen3-Next, ...) mix attention with state-space, linear-attention
    or convolution layers; their per-layer lists say so."""
    softmax_attention = lambda k: ("attention" in k or "attn" in k) and "linear" not in k  # noqa: E731
    other: set[str] = set()
    for key in ("layer_types", "layers_block_type", "block_types", "layer_block_types"):
        kinds = getattr(cfg, key, None)
        if isinstance(kinds, (list, tuple)):
            other |= {str(k) for k in kinds if not softmax_attention(str(k))}
    if other or model_type in HYBRIDS:
        what = f" ({', '.join(sorted(other))} layers)" if other else ""
        raise LabkitError(
            f"{model_type!r} has layers without standard attention{what}: a hybrid whose state-space, "
            "linear-attention or convolution layers keep a recurrent state instead of a KV cache, which this "
            f"estimator does not model. Supported: transformer decoders ({', '.join(FORMULA_FAMILIES)}, and other "
            "causal LMs transformers builds with attention in every layer).")


def _require_causal_lm(model_type: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise LabkitError(
            f"transformers has no causal language model for model_type {model_type!r} (AutoModelForCausalLM "
            "cannot build it; encoder-only and encoder-decoder models are not estimated here). Supported: "
            f"{', '.join(FORMULA_FAMILIES)}, and the other model types in transformers' "
            "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.")


def _require_fields(model_type: str, raw: dict, cfg: Any, complete: bool) -> None:
    """Every field the estimate needs must be in the config, not guessed from transformers' defaults."""
    text_raw = raw
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(raw.get(key), dict):
            text_raw = raw[key]
    aliases = getattr(cfg, "attribute_map", {}) or {}
    for name, purpose in REQUIRED_FIELDS.items():
        value = getattr(cfg, name, None)
        given = complete or name in text_raw or aliases.get(name) in text_raw
        if value is None or not given:
            raise LabkitError(
                f"the {model_type!r} config has no {name!r} field ({purpose}); labkit does not guess it. Pass the "
                f"model's complete config.json (it needs {', '.join(REQUIRED_FIELDS)}).")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LabkitError(f"the {model_type!r} config's {name!r} must be a positive whole number, got {value!r}")


@lru_cache(maxsize=64)
def _default_attention(model_type: str) -> str:
    """The attention transformers uses by default: 'sdpa' where the model class supports it, else 'eager'."""
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
        return "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
    except (ImportError, KeyError, AttributeError):
        return "sdpa"


# ============================================================================ the weight inventory


@dataclass(frozen=True)
class WeightTensor:
    """One weight tensor of the model, as the estimator sees it."""

    name: str  # e.g. "layers.mlp.gate_proj" (one entry stands for `count` identical tensors)
    shape: tuple[int, ...]
    kind: str  # "linear" (nn.Linear: quantized by bitsandbytes), "embedding", "lm_head", "norm", "bias", "experts",
    #            "router", "other"
    count: int = 1
    keep_fp32: bool = False  # stays in float32 whatever the model's dtype (transformers' _keep_in_fp32_modules)

    @property
    def numel(self) -> int:
        return math.prod(self.shape) * self.count


def weight_tensors(model: Any) -> list[WeightTensor]:
    """Every weight of the model grouped by kind: what the memory estimate prices.

    For the model types in FORMULA_FAMILIES these are the formulas' tensors (`formula_weight_tensors`),
    checked once against the model transformers builds on the meta device (`meta_weight_tensors`:
    shapes only, no memory). Where the two disagree, and for every other model type, the meta
    tensors are used; `weight_check(model)` says which.
    """
    return list(_checked_weights(architecture(model))[0])


@dataclass(frozen=True)
class WeightCheck:
    """The formula's parameter count against the meta-device model's."""

    model: str
    formula: int | None  # None: no formula for this model type
    meta: int
    differences: tuple[str, ...] = ()  # what the formula misses or adds, by kind

    @property
    def agree(self) -> bool:
        return self.formula == self.meta and not self.differences

    def __str__(self) -> str:
        if self.formula is None:
            return (f"weights of {self.model}: read off the model transformers builds on the meta device "
                    f"({self.meta:,} parameters; no formula for this model type)")
        if self.agree:
            return f"weights of {self.model}: the formula's {self.formula:,} parameters equal the meta-device model's"
        return (f"weights of {self.model}: the formula gives {self.formula:,} parameters, the meta-device model has "
                f"{self.meta:,}; the estimate uses the meta tensors ({'; '.join(self.differences)})")


def weight_check(model: Any) -> WeightCheck:
    """Compare the formula's weights with the meta-device model's (see `weight_tensors`)."""
    return _checked_weights(architecture(model))[1]


@lru_cache(maxsize=128)
def _checked_weights(a: Architecture) -> tuple[tuple[WeightTensor, ...], WeightCheck]:
    meta = meta_weight_tensors(a)
    n_meta = sum(t.numel for t in meta)
    if a.generic:
        return meta, WeightCheck(a.name, None, n_meta)
    formula = tuple(formula_weight_tensors(a))
    differences = _differences(formula, meta)
    check = WeightCheck(a.name, sum(t.numel for t in formula), n_meta, differences)
    return (formula if check.agree else meta), check


def _differences(formula: tuple[WeightTensor, ...], meta: tuple[WeightTensor, ...]) -> tuple[str, ...]:
    """Per kind (and float32 or not): how many parameters the formula misses, naming the meta tensors it has
    no same-shaped counterpart for."""
    out = []
    key = lambda t: (t.kind, t.keep_fp32)  # noqa: E731
    for kind in sorted({key(t) for t in (*formula, *meta)}):
        f = sum(t.numel for t in formula if key(t) == kind)
        m = sum(t.numel for t in meta if key(t) == kind)
        if f != m:
            shapes = {(t.shape, t.count) for t in formula if key(t) == kind}
            names = [t.name for t in meta if key(t) == kind and (t.shape, t.count) not in shapes]
            label = f"{kind[0]}{' (float32)' if kind[1] else ''}"
            out.append(f"{label}: formula {f:,}, meta {m:,}" + (f" ({', '.join(names[:6])})" if names else ""))
    return tuple(out)


def meta_weight_tensors(model: Any) -> tuple[WeightTensor, ...]:
    """Every parameter of the model transformers builds from the config, read off the meta device (no
    memory is allocated; about a second for a large model), grouped across layers.

    Kinds: nn.Linear weights are "linear" (the layers bitsandbytes quantizes), the output matrix
    "lm_head", nn.Embedding "embedding", the 3-D expert tensors of a mixture of experts (and their
    biases) "experts", the router "router", 1-D weights of norms "norm", other 1-D tensors "bias".
    """
    a = architecture(model)
    return _meta_tensors(a.config_json)


@lru_cache(maxsize=64)
def _meta_tensors(config_json: str) -> tuple[WeightTensor, ...]:
    import torch
    from transformers import AutoModelForCausalLM

    if not config_json:
        raise LabkitError("this Architecture was not read from a config; pass the model's config instead.")
    cfg = to_transformers_config(json.loads(config_json))
    cfg.quantization_config = None  # a pre-quantized checkpoint's config (e.g. GPT-OSS's MXFP4): count its tensors
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    except Exception as err:  # transformers refused the config: say what it said, not where
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LabkitError(f"transformers cannot build a {cfg.model_type!r} model from this config: {first}") from err
    groups: dict[tuple, int] = {}
    seen: set[int] = set()
    for module_name, module in net.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied weights: counted once
                continue
            seen.add(id(param))
            name = re.sub(r"\.\d+(?=\.|$)", "", f"{module_name}.{param_name}").removeprefix("model.")
            name = name.removesuffix(".weight")
            kind = _meta_kind(module_name, module, param_name, param)
            key = (name, tuple(param.shape), kind, param.dtype == torch.float32)
            groups[key] = groups.get(key, 0) + 1
    return tuple(WeightTensor(n, shape, kind, count, fp32) for (n, shape, kind, fp32), count in groups.items())


def _meta_kind(module_name: str, module: Any, param_name: str, param: Any) -> str:
    import torch

    cls = type(module).__name__.lower()
    if module_name.endswith("lm_head"):
        return "lm_head"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, torch.nn.Linear):
        return "linear" if param_name == "weight" else "bias"
    if "expert" in cls:
        return "experts"
    if "router" in cls or "gate" in cls:
        return "router"
    if param.dim() == 1:
        return "norm" if "norm" in cls else "bias"
    return "other"


def formula_weight_tensors(model: Any) -> list[WeightTensor]:
    """Every weight of the model from the config alone, by the formulas the course teaches (per layer:
    q, k, v, o; the MLP or the experts; the norms). For the model types in FORMULA_FAMILIES; the unit
    tests check it against the parameters transformers creates for random configs of each."""
    a = architecture(model)
    if a.generic:
        raise LabkitError(f"no formula for model type {a.model_type!r} (formulas: {', '.join(FORMULA_FAMILIES)}); "
                          "meta_weight_tensors(model) reads its weights off the meta device.")
    W = WeightTensor
    h, inter, L = a.hidden_size, a.intermediate_size, a.num_layers
    out: list[WeightTensor] = [W("embed_tokens", (a.vocab_size, h), "embedding"),
                               W("norm", (h,), "norm")]
    if not a.tied_embeddings:
        out.append(W("lm_head", (a.vocab_size, h), "lm_head"))
    q_out, kv_out = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    if a.is_mla:
        q_width = a.num_heads * a.head_dim
        if a.q_lora_rank:
            out += [W("layers.self_attn.q_a_proj", (a.q_lora_rank, h), "linear", L),
                    W("layers.self_attn.q_a_layernorm", (a.q_lora_rank,), "norm", L),
                    W("layers.self_attn.q_b_proj", (q_width, a.q_lora_rank), "linear", L)]
        else:
            out.append(W("layers.self_attn.q_proj", (q_width, h), "linear", L))
        out += [
            W("layers.self_attn.kv_a_proj_with_mqa", (a.kv_lora_rank + a.qk_rope_dim, h), "linear", L),
            W("layers.self_attn.kv_a_layernorm", (a.kv_lora_rank,), "norm", L),
            W("layers.self_attn.kv_b_proj", (a.num_heads * (a.qk_nope_dim + a.v_head_dim), a.kv_lora_rank), "linear", L),
            W("layers.self_attn.o_proj", (h, a.num_heads * a.v_head_dim), "linear", L),
        ]
    elif a.fused_projections:
        out += [W("layers.self_attn.qkv_proj", (q_out + 2 * kv_out, h), "linear", L),
                W("layers.self_attn.o_proj", (h, q_out), "linear", L)]
    else:
        out += [W("layers.self_attn.q_proj", (q_out, h), "linear", L),
                W("layers.self_attn.k_proj", (kv_out, h), "linear", L),
                W("layers.self_attn.v_proj", (kv_out, h), "linear", L),
                W("layers.self_attn.o_proj", (h, q_out), "linear", L)]
    if a.is_mla and a.attention_bias:  # biases on the down-projections (q_a only when the query is low-rank)
        out.append(W("layers.self_attn.a_proj_bias", (a.q_lora_rank + a.kv_lora_rank + a.qk_rope_dim,), "bias", L))
    elif a.qkv_bias or a.attention_bias:
        out.append(W("layers.self_attn.qkv_bias", (q_out + 2 * kv_out,), "bias", L))
    if a.attention_bias:
        out.append(W("layers.self_attn.o_proj.bias", (h,), "bias", L))
    if a.attention_sinks:
        out.append(W("layers.self_attn.sinks", (a.num_heads,), "bias", L))
    if a.qk_norm == "head":
        out.append(W("layers.self_attn.qk_norm", (2, a.head_dim), "norm", L))
    elif a.qk_norm == "full":
        out += [W("layers.self_attn.q_norm", (q_out,), "norm", L), W("layers.self_attn.k_norm", (kv_out,), "norm", L)]
    out.append(W("layers.norms", (a.norms_per_layer, h), "norm", L))

    kinds = a.layer_kinds()
    dense, moe = kinds.count("dense"), kinds.count("moe")
    if dense:
        if a.fused_projections:
            out += [W("layers.mlp.gate_up_proj", (2 * inter, h), "linear", dense),
                    W("layers.mlp.down_proj", (h, inter), "linear", dense)]
        else:
            out += [W("layers.mlp.gate_proj", (inter, h), "linear", dense),
                    W("layers.mlp.up_proj", (inter, h), "linear", dense),
                    W("layers.mlp.down_proj", (h, inter), "linear", dense)]
        if a.mlp_bias:
            out.append(W("layers.mlp.bias", (2 * inter + h,), "bias", dense))
    if moe:
        e, ei = a.num_experts, a.expert_intermediate
        out += [W("layers.mlp.gate", (e, h), "router", moe),
                W("layers.mlp.experts.gate_up_proj", (e, 2 * ei, h), "experts", moe),
                W("layers.mlp.experts.down_proj", (e, h, ei), "experts", moe)]
        if a.router_bias:
            out.append(W("layers.mlp.gate.bias", (e,), "router", moe))
        if a.expert_bias:
            out += [W("layers.mlp.experts.gate_up_proj_bias", (e, 2 * ei), "experts", moe),
                    W("layers.mlp.experts.down_proj_bias", (e, h), "experts", moe)]
        if a.shared_expert_intermediate:
            si = a.shared_expert_intermediate
            out += [W("layers.mlp.shared_experts.gate_proj", (si, h), "linear", moe),
                    W("layers.mlp.shared_experts.up_proj", (si, h), "linear", moe),
                    W("layers.mlp.shared_experts.down_proj", (h, si), "linear", moe)]
        if a.shared_expert_gate:
            out.append(W("layers.mlp.shared_experts.shared_expert_gate", (1, h), "linear", moe))
    return out


def parameter_count(model: Any) -> int:
    """Total parameters (tied embeddings counted once)."""
    return sum(t.numel for t in weight_tensors(model))


def active_parameter_count(model: Any) -> int:
    """Parameters one token uses: for a mixture of experts, only `experts_per_token` experts per layer."""
    a = architecture(model)
    total = 0
    for t in weight_tensors(a):
        if t.kind == "experts":
            total += t.numel * a.experts_per_token // a.num_experts
        else:
            total += t.numel
    return total
