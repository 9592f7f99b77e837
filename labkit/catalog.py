"""Model families: the catalog of open models, exact parameter counts from real configs, and a picker.

Three things live here, each usable on its own:

1. **The catalog** (`datasets/catalog.yaml`): one entry per open model the course talks about, with
   its family, size, context, licence and what the licence allows, how open it is, its specialities
   and the published benchmark scores the course quotes (each with its source).
2. **Architecture from a config**: `count_parameters(config)` computes the total and the active
   (per-token) parameter count of a decoder from its `config.json` alone, exactly: embeddings,
   attention (MHA, GQA, MQA, and DeepSeek's latent attention, MLA), dense MLPs, mixture-of-experts
   layers with their router and shared experts, norms, biases and tied embeddings. The tests check
   it against `sum(p.numel())` of the same architecture built by transformers.
   `architecture_summary` reads the rest off the config: GQA ratio, head size, RoPE base, sliding
   window, experts, vocabulary, context, and what each token costs in the KV cache. The shape itself
   is labkit.architecture's, the byte formulas labkit.vram's.
3. **The picker**: `recommend(task, vram_gb, ...)` ranks the catalog models that fit a memory
   budget at a chosen quantization and says why; `labkit.catalog_widget.picker()` is a thin
   ipywidgets view on it.

A config is given as the name of a shipped config (`"llama-3.1-8b"`), a dict shaped like a Hub
`config.json`, or a transformers `PretrainedConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import vram
from .architecture import architecture as read_architecture
from .architecture import weight_tensors
from .check import exercise, validator
from .dtypes import bytes_per_weight, normalize_dtype
from .errors import LabkitError, require_positive, unknown
from .formatting import GIB
from .hardware import is_online, usable_memory
from .models import build_random_model, config_info, list_configs, load_config, to_transformers_config
from .paths import datasets_dir

# torch, transformers, matplotlib, yaml and huggingface_hub are imported inside the functions that use them:
# `import labkit` stays quick and works without the optional extras.

TASKS = ("general", "code", "math", "reasoning", "multilingual", "vision")
OPENNESS = ("truly-open", "open-weight", "restricted")
COMMERCIAL = ("yes", "conditional", "no")
# licence filters of the picker: which entries each one keeps
LICENCE_FILTERS = {
    "any": "every licence",
    "commercial": "commercial use allowed (possibly with conditions)",
    "permissive": "permissive licence (Apache 2.0, MIT): open-weight or truly open",
    "truly-open": "weights, training code and training data all published",
}
TASK_BENCHMARK = {"general": "MMLU", "code": "HumanEval", "math": "MATH", "reasoning": "MATH"}


# =============================================================================== the catalog


@dataclass(frozen=True)
class ModelEntry:
    """One catalog entry (see the header of datasets/catalog.yaml for the meaning of each field)."""

    id: str
    name: str
    family: str
    organisation: str
    hf_id: str
    params_b: float
    params_source: str
    architecture: str
    context: int
    release: str
    licence: str
    commercial: str
    licence_terms: str
    openness: str
    specialities: tuple[str, ...]
    active_params_b: float | None = None
    config: str | None = None
    note: str = ""
    context_note: str = ""  # why the published context differs from the config's max_position_embeddings
    benchmarks: tuple[dict, ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.architecture == "moe"

    @property
    def active_b(self) -> float:
        """Parameters used per token, in billions (the total for a dense model)."""
        return self.active_params_b if self.active_params_b is not None else self.params_b

    def benchmark(self, name: str) -> dict | None:
        """The published score for a benchmark (`{"name", "score", "setting", "source"}`), or None."""
        return next((b for b in self.benchmarks if b["name"].lower() == name.lower()), None)


_REQUIRED_ENTRY_FIELDS = ("id", "name", "family", "organisation", "hf_id", "params_b", "params_source",
                          "architecture", "context", "release", "licence", "commercial", "licence_terms",
                          "openness", "specialities")


def _entry(raw: dict) -> ModelEntry:
    missing = [k for k in _REQUIRED_ENTRY_FIELDS if k not in raw]
    if missing:
        raise LabkitError(f"catalog entry {raw.get('id', '?')!r} lacks {', '.join(missing)}")
    if raw["openness"] not in OPENNESS:
        raise unknown(f"openness of {raw['id']}", raw["openness"], OPENNESS)
    if raw["commercial"] not in COMMERCIAL:
        raise unknown(f"commercial terms of {raw['id']}", raw["commercial"], COMMERCIAL)
    bad = [s for s in raw["specialities"] if s not in TASKS]
    if bad:
        raise unknown(f"speciality of {raw['id']}", bad[0], TASKS)
    known = {f for f in ModelEntry.__dataclass_fields__}
    values = {k: v for k, v in raw.items() if k in known}
    values["specialities"] = tuple(raw["specialities"])
    values["benchmarks"] = tuple(raw.get("benchmarks", ()))
    values["release"] = str(raw["release"])
    return ModelEntry(**values)


@lru_cache(maxsize=1)
def load_catalog() -> tuple[ModelEntry, ...]:
    """Every entry of datasets/catalog.yaml, in file order."""
    import yaml

    data = yaml.safe_load((datasets_dir() / "catalog.yaml").read_text())
    entries = tuple(_entry(raw) for raw in data["models"])
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise LabkitError("datasets/catalog.yaml has duplicate ids")
    return entries


def get_model(model_id: str) -> ModelEntry:
    """The catalog entry with this id (e.g. 'mixtral-8x7b')."""
    for entry in load_catalog():
        if entry.id == model_id:
            return entry
    raise unknown("model", model_id, [e.id for e in load_catalog()])


def families() -> list[str]:
    """The model families in the catalog, in the order they first appear."""
    return list(dict.fromkeys(e.family for e in load_catalog()))


def find_models(family: str | None = None, speciality: str | None = None, openness: str | None = None,
                commercial: str | None = None, architecture: str | None = None,
                max_params_b: float | None = None) -> list[ModelEntry]:
    """Catalog entries matching every filter given (None means 'any')."""
    if family is not None and family not in families():
        raise unknown("family", family, families())
    if speciality is not None and speciality not in TASKS:
        raise unknown("speciality", speciality, TASKS)
    if openness is not None and openness not in OPENNESS:
        raise unknown("openness", openness, OPENNESS)
    if commercial is not None and commercial not in COMMERCIAL:
        raise unknown("commercial terms", commercial, COMMERCIAL)
    if architecture is not None and architecture not in ("dense", "moe"):
        raise unknown("architecture", architecture, ("dense", "moe"))
    if max_params_b is not None:
        require_positive("max_params_b", max_params_b)
    return [
        e for e in load_catalog()
        if (family is None or e.family == family)
        and (speciality is None or speciality in e.specialities)
        and (openness is None or e.openness == openness)
        and (commercial is None or e.commercial == commercial)
        and (architecture is None or e.architecture == architecture)
        and (max_params_b is None or e.params_b <= max_params_b)
    ]


def catalog_rows(entries: list[ModelEntry] | None = None) -> list[dict]:
    """Plain rows (one dict per model) for a table: the fields a reader compares first."""
    rows = []
    for e in entries if entries is not None else load_catalog():
        size = f"{e.params_b:g}B" if not e.is_moe else f"{e.params_b:g}B ({e.active_b:g}B active)"
        rows.append({
            "model": e.name, "family": e.family, "organisation": e.organisation, "size": size,
            "context": f"{e.context // 1024}K" if e.context >= 1024 else str(e.context),
            "released": e.release, "licence": e.licence, "commercial": e.commercial,
            "openness": e.openness, "specialities": ", ".join(e.specialities),
        })
    return rows


def benchmark_rows(name: str) -> list[dict]:
    """Every published score for one benchmark (MMLU, HumanEval, MATH) with its setting and source."""
    rows = [{"model": e.name, "score": b["score"], "setting": b["setting"], "source": b["source"]}
            for e in load_catalog() if (b := e.benchmark(name)) is not None]
    if not rows:
        names = sorted({b["name"] for e in load_catalog() for b in e.benchmarks})
        raise unknown("benchmark", name, names)
    return sorted(rows, key=lambda r: -r["score"])


# =============================================================================== configs


# fields a config must state for each architecture we can count (transformers would otherwise
# silently fill in its defaults, i.e. count the wrong model)
_COMMON_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_FIELDS = {
    "llama": ("intermediate_size",),
    "mistral": ("intermediate_size",),
    "qwen2": ("intermediate_size",),
    "gemma2": ("intermediate_size",),
    "gemma3_text": ("intermediate_size",),
    "phi3": ("intermediate_size",),
    "mixtral": ("intermediate_size", "num_local_experts", "num_experts_per_tok"),
    "deepseek_v2": ("intermediate_size", "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok",
                    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
    "qwen3": ("intermediate_size",),
    "olmo2": ("intermediate_size",),
    "qwen2_moe": ("moe_intermediate_size", "num_experts", "num_experts_per_tok", "shared_expert_intermediate_size"),
    "qwen3_moe": ("moe_intermediate_size", "num_experts", "num_experts_per_tok"),
    "olmoe": ("intermediate_size", "num_experts", "num_experts_per_tok"),
    "gpt_oss": ("intermediate_size", "num_local_experts", "num_experts_per_tok"),
    "granitemoe": ("intermediate_size", "num_local_experts", "num_experts_per_tok"),
}
SUPPORTED_MODEL_TYPES = tuple(_FIELDS)


def _resolve(config: str | dict | Any) -> tuple[dict | None, Any]:
    """(raw dict or None, transformers config) for a shipped name, a config dict, or a config."""
    from transformers import PretrainedConfig

    if isinstance(config, PretrainedConfig):
        if config.model_type not in _FIELDS:
            raise unknown("model_type", config.model_type, SUPPORTED_MODEL_TYPES)
        return None, config
    if isinstance(config, str):
        raw = load_config(config)
    elif isinstance(config, dict):
        raw = config
    else:
        raise LabkitError(f"a config is a shipped config name, a dict or a transformers config, got {type(config).__name__}")
    model_type = raw.get("model_type")
    if model_type is None:
        raise LabkitError("this config has no 'model_type' field; a config.json always names its architecture "
                          f"(one of {', '.join(SUPPORTED_MODEL_TYPES)})")
    if model_type not in _FIELDS:
        raise unknown("model_type", model_type, SUPPORTED_MODEL_TYPES)
    missing = [f for f in (*_COMMON_FIELDS, *_FIELDS[model_type]) if raw.get(f) is None]
    if missing:
        raise LabkitError(f"this {model_type} config lacks {', '.join(missing)}: every one is needed to "
                          "count its parameters (they are in every real config.json of this architecture)")
    for f in (*_COMMON_FIELDS, *_FIELDS[model_type]):
        value = raw[f]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise LabkitError(f"config field {f!r} must be a positive integer, got {value!r}")
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs are not validated field by field
        StrictDataclassError = ValueError  # noqa: N806
    try:
        return raw, to_transformers_config(raw)
    except LabkitError:
        raise
    except (TypeError, ValueError, StrictDataclassError) as err:  # transformers checks the other fields
        raise LabkitError(f"transformers refused this {model_type} config: {err}") from err


# =============================================================================== parameter counts


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a decoder by part. `active` counts what one token uses (all but the experts
    the router did not pick); both totals include the input embedding and the output head."""

    total: int
    active: int
    embedding: int  # input embedding table
    lm_head: int  # output projection (0 when tied to the embedding)
    attention: int
    mlp: int  # dense feed-forward layers
    experts: int  # routed experts, all of them
    shared_experts: int
    router: int
    norms: int

    @property
    def active_without_embedding(self) -> int:
        """Active parameters without the input embedding table (a lookup, not a matrix product).
        Some publishers (DeepSeek) quote this one."""
        return self.active - self.embedding

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def count_parameters(config: str | dict | Any) -> ParameterCount:
    """Exact parameter count of a decoder-only model from its config, without building it.

    Supported architectures: llama, mistral, qwen2, gemma2, gemma3_text, phi3, mixtral, deepseek_v2.
    The tensors come from `labkit.architecture.weight_tensors` (the same list the memory estimate prices);
    this groups them the way model cards talk about them.
    """
    _, cfg = _resolve(config)  # validates the fields and names what is missing
    arch = read_architecture(cfg)
    parts = dict.fromkeys(("embedding", "lm_head", "attention", "mlp", "experts", "shared_experts", "router",
                           "norms"), 0)
    inactive = 0
    for t in weight_tensors(arch):
        if t.kind in ("embedding", "lm_head", "experts", "router"):
            part = t.kind
        elif t.name.startswith("layers.self_attn."):  # incl. the norms inside attention (Gemma 3, DeepSeek)
            part = "attention"
        elif t.name.startswith("layers.mlp.shared_experts."):
            part = "shared_experts"
        elif t.name.startswith("layers.mlp."):
            part = "mlp"
        else:
            part = "norms"
        parts[part] += t.numel
        if t.kind == "experts":  # the router picks experts_per_token of num_experts in each layer
            inactive += t.numel * (arch.num_experts - arch.experts_per_token) // arch.num_experts
    total = sum(parts.values())
    return ParameterCount(total=total, active=total - inactive, **parts)


def count_built_parameters(config: str | dict | Any) -> int:
    """`sum(p.numel())` of the real transformers model built from the config on the meta device
    (no memory is allocated): the reference `count_parameters` must match."""
    _, cfg = _resolve(config)
    model = build_random_model(cfg, device="meta").model
    return sum(p.numel() for p in model.parameters())


# =============================================================================== architecture


def _rope(raw: dict | None, cfg) -> tuple[float | None, str | None]:
    """(RoPE base theta of the full-attention layers, scaling type or None)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if "full_attention" in params:  # per-layer-type parameters (Gemma 3)
        params = params["full_attention"]
    theta = (raw or {}).get("rope_theta") or params.get("rope_theta") or getattr(cfg, "rope_theta", None)
    scaling = params.get("rope_type") or params.get("type")
    if scaling == "default":
        scaling = None
    if scaling and params.get("factor"):
        scaling = f"{scaling} ×{params['factor']:g}"
    return (float(theta) if theta is not None else None), scaling


def architecture_summary(config: str | dict | Any) -> dict:
    """What sets an architecture apart, read off its config: attention kind and GQA ratio, head size,
    RoPE base and scaling, sliding window, experts, vocabulary, context, exact parameter counts."""
    raw, cfg = _resolve(config)
    arch = read_architecture(cfg)
    n_heads, n_kv = arch.num_heads, arch.num_kv_heads
    attention = arch.kv_grouping.split(" ")[0]  # "MLA", "MHA", "MQA" or "GQA"
    theta, scaling = _rope(raw, cfg)
    counts = count_parameters(cfg)
    experts = arch.num_experts or None
    return {
        "name": config if isinstance(config, str) else getattr(cfg, "_name_or_path", "") or cfg.model_type,
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "attention": attention,
        "heads": n_heads,
        "kv_heads": n_kv,
        "gqa_ratio": n_heads / n_kv,
        "head_dim": arch.head_dim,  # MLA: the query/key width, nope + rope
        "vocab_size": cfg.vocab_size,
        "context": cfg.max_position_embeddings,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "sliding_window": arch.sliding_window,
        "sliding_layers": arch.layer_types.count("sliding") if arch.sliding_window else 0,
        "experts": experts,
        "experts_per_token": arch.experts_per_token if experts else None,
        "shared_experts": getattr(cfg, "n_shared_experts", None) if experts else None,
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "params_total": counts.total,
        "params_active": counts.active,
        "kv_bytes_per_token": int(sum(vram.kv_cache_bytes_per_token(arch, "bf16").values())),
    }


def architecture_rows(names: list[str] | None = None) -> list[dict]:
    """One readable row per shipped config: the table the notebook shows."""
    rows = []
    for name in names if names is not None else list_configs():
        s = architecture_summary(name)
        window = "—" if not s["sliding_window"] else f"{s['sliding_window']} ({s['sliding_layers']}/{s['layers']} layers)"
        experts = "—" if not s["experts"] else f"{s['experts_per_token']} of {s['experts']}" + (
            f" + {s['shared_experts']} shared" if s["shared_experts"] else "")
        rows.append({
            "config": name, "params": f"{s['params_total'] / 1e9:.2f}B", "active": f"{s['params_active'] / 1e9:.2f}B",
            "layers": s["layers"], "attention": s["attention"],
            "heads (q/kv)": f"{s['heads']}/{s['kv_heads']}", "head dim": s["head_dim"],
            "vocab": f"{s['vocab_size']:,}", "context": f"{s['context']:,}",
            "RoPE θ": f"{s['rope_theta']:,.0f}" + (f" ({s['rope_scaling']})" if s["rope_scaling"] else ""),
            "sliding window": window, "experts": experts,
            "KV/token (bf16)": f"{s['kv_bytes_per_token'] / 1024:,.0f} KiB",
        })
    return rows


def context_rows() -> list[dict]:
    """Every catalog model with a shipped config whose published context differs from the config's
    `max_position_embeddings`, with the catalog's explanation of the difference."""
    rows = []
    for e in load_catalog():
        if not e.config:
            continue
        in_config = read_architecture(e.config).max_position
        if in_config != e.context:
            rows.append({"model": e.name, "published context": f"{e.context:,}",
                         "config max_position_embeddings": f"{in_config:,}",
                         "why": e.context_note or "(no explanation in datasets/catalog.yaml)"})
    return rows


def published_vs_computed() -> list[dict]:
    """For every shipped config: the parameter count computed from the config next to the count its
    publisher states (from the catalog), with the difference."""
    rows = []
    by_config = {e.config: e for e in load_catalog() if e.config}
    for name in list_configs():
        entry = by_config.get(name)
        counts = count_parameters(name)
        row = {"config": name, "computed_total": counts.total, "computed_active": counts.active,
               "computed_active_without_embedding": counts.active_without_embedding,
               "published_total_b": entry.params_b if entry else None,
               "published_active_b": entry.active_params_b if entry else None,
               "source": entry.params_source if entry else None}
        row["difference_pct"] = (100 * (counts.total / 1e9 - entry.params_b) / entry.params_b) if entry else None
        rows.append(row)
    return rows


def parameter_report_rows() -> list[dict]:
    """`published_vs_computed()` formatted for reading: counts in billions, the difference in percent."""
    rows = []
    for r in published_vs_computed():
        active = ""
        if r["published_active_b"] is not None:
            active = (f"{r['computed_active'] / 1e9:.2f}B ({r['computed_active_without_embedding'] / 1e9:.2f}B "
                      f"without the embedding) vs {r['published_active_b']:g}B")
        rows.append({"config": r["config"], "computed": f"{r['computed_total']:,}",
                     "computed (B)": f"{r['computed_total'] / 1e9:.3f}",
                     "published (B)": f"{r['published_total_b']:g}" if r["published_total_b"] else "—",
                     "difference": f"{r['difference_pct']:+.2f}%" if r["difference_pct"] is not None else "—",
                     "active: computed vs published": active})
    return rows


def licence_rows() -> list[dict]:
    """One row per licence in the catalog: what it allows, its openness class, and which models use it."""
    groups: dict[str, list[ModelEntry]] = {}
    for e in load_catalog():
        groups.setdefault(e.licence, []).append(e)
    rows = []
    for licence, entries in groups.items():
        rows.append({"licence": licence, "commercial": entries[0].commercial, "openness": entries[0].openness,
                     "terms": entries[0].licence_terms,
                     "models": ", ".join(e.name for e in entries[:4]) + (" …" if len(entries) > 4 else "")})
    order = {"yes": 0, "conditional": 1, "no": 2}
    return sorted(rows, key=lambda r: order[r["commercial"]])


def kv_allowance_ratios(context: int = 4096) -> dict[str, float]:
    """Catalog name -> the picker's size-based KV allowance divided by the exact KV cache at `context`
    tokens, for every model with a shipped config (1.0 = the rule of thumb is exact)."""
    require_positive("context", context)
    ratios = {}
    for e in load_catalog():
        if e.config:
            exact = vram.kv_cache_bytes(e.config, int(context), kv_dtype="fp16")
            ratios[e.name] = kv_allowance_bytes_per_token(count_parameters(e.config).active / 1e9) * context / exact
    return ratios


def kv_allowance_rows(context: int = 4096) -> list[dict]:
    """For each shipped config: the picker's size-based KV allowance next to the exact KV cache."""
    ratios = kv_allowance_ratios(context)
    rows = []
    for e in load_catalog():
        if not e.config:
            continue
        exact = vram.kv_cache_bytes(e.config, int(context), kv_dtype="fp16")
        rows.append({"model": e.name, "attention": architecture_summary(e.config)["attention"],
                     f"exact KV at {context:,} tokens": f"{exact / 2**20:,.0f} MiB",
                     "allowance": f"{exact * ratios[e.name] / 2**20:,.0f} MiB",
                     "allowance / exact": f"{ratios[e.name]:.2f}"})
    return rows


def kv_allowance_summary(context: int = 4096, factor: float = 3.0) -> str:
    """One sentence, computed: for how many shipped models the allowance is within `factor` of the exact
    cache, and which ones it misses (too high or too low)."""
    ratios = kv_allowance_ratios(context)
    low = [f"{n} ({r:.2f}×)" for n, r in ratios.items() if r < 1 / factor]
    high = [f"{n} ({r:.1f}×)" for n, r in ratios.items() if r > factor]
    inside = len(ratios) - len(low) - len(high)
    text = f"At {context:,} tokens the allowance is within {factor:g}× of the exact cache for {inside} of {len(ratios)} models"
    if high:
        text += f"; far too high for {', '.join(high)}"
    if low:
        text += f"; far too low for {', '.join(low)}"
    return text + "."


# =============================================================================== mixture of experts


def route_tokens(hidden, router_weight, top_k: int):
    """Top-k routing as Mixtral does it: score every expert with a linear router, keep the k best,
    softmax over those k. Returns (weights [tokens, k], expert indices [tokens, k])."""
    import torch

    n_experts = router_weight.shape[0]
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= n_experts:
        raise LabkitError(f"top_k must be an integer from 1 to the number of experts ({n_experts}), got {top_k!r}")
    logits = hidden @ router_weight.T
    top_logits, indices = torch.topk(logits, top_k, dim=-1)
    return torch.softmax(top_logits, dim=-1), indices


def _tiny_moe_class():
    import torch
    from torch import nn

    class TinyMoE(nn.Module):
        """A mixture-of-experts feed-forward layer small enough to read: `n_experts` SwiGLU experts and
        a linear router that sends each token to its `top_k` best experts."""

        def __init__(self, d_model: int = 16, d_ff: int = 32, n_experts: int = 8, top_k: int = 2, seed: int = 0):
            super().__init__()
            for name, value in (("d_model", d_model), ("d_ff", d_ff), ("n_experts", n_experts)):
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise LabkitError(f"{name} must be a positive integer, got {value!r}")
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
                raise LabkitError(f"top_k must be an integer from 1 to n_experts ({n_experts}), got {top_k!r}")
            generator = torch.Generator().manual_seed(seed)
            self.top_k = top_k
            self.router = nn.Parameter(torch.randn(n_experts, d_model, generator=generator) / d_model**0.5)
            self.gate = nn.Parameter(torch.randn(n_experts, d_ff, d_model, generator=generator) / d_model**0.5)
            self.up = nn.Parameter(torch.randn(n_experts, d_ff, d_model, generator=generator) / d_model**0.5)
            self.down = nn.Parameter(torch.randn(n_experts, d_model, d_ff, generator=generator) / d_ff**0.5)

        def expert(self, e: int, x):
            return (torch.nn.functional.silu(x @ self.gate[e].T) * (x @ self.up[e].T)) @ self.down[e].T

        def forward(self, x):
            weights, indices = route_tokens(x, self.router, self.top_k)
            out = torch.zeros_like(x)
            for e in range(self.router.shape[0]):  # each expert processes only the tokens routed to it
                token, slot = (indices == e).nonzero(as_tuple=True)
                if token.numel():
                    out[token] += weights[token, slot, None] * self.expert(e, x[token])
            return out, indices

        def parameters_per_expert(self) -> int:
            return self.gate[0].numel() + self.up[0].numel() + self.down[0].numel()

    return TinyMoE


def tiny_moe(d_model: int = 16, d_ff: int = 32, n_experts: int = 8, top_k: int = 2, seed: int = 0):
    """A TinyMoE layer (see `_tiny_moe_class`): forward returns (output, chosen expert indices)."""
    return _tiny_moe_class()(d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=top_k, seed=seed)


@dataclass
class MoEDemo:
    tokens: int
    n_experts: int
    top_k: int
    tokens_per_expert: list[int]
    params_total: int  # every expert's weights: what must sit in memory
    params_active: int  # what one token multiplies with: what sets the compute
    output_matches_reference: bool

    def __str__(self) -> str:
        return (f"{self.tokens} tokens, {self.top_k} of {self.n_experts} experts each\n"
                f"tokens per expert : {self.tokens_per_expert}\n"
                f"parameters in memory (all experts + router): {self.params_total:,}\n"
                f"parameters used per token (top-{self.top_k} + router): {self.params_active:,} "
                f"({100 * self.params_active / self.params_total:.0f}%)\n"
                f"sparse output equals the dense reference: {self.output_matches_reference}")


def moe_demo(tokens: int = 64, n_experts: int = 8, top_k: int = 2, d_model: int = 16, d_ff: int = 32,
             seed: int = 0) -> MoEDemo:
    """Route `tokens` random tokens through a TinyMoE; count tokens per expert and the parameters held
    in memory versus used per token; check the sparse computation against running every expert."""
    import torch

    require_positive("tokens", tokens)
    layer = tiny_moe(d_model, d_ff, n_experts, top_k, seed)
    x = torch.randn(int(tokens), d_model, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        out, indices = layer(x)
        # reference: run every expert on every token, then keep the top-k mix
        all_out = torch.stack([layer.expert(e, x) for e in range(n_experts)], dim=1)  # [T, E, d]
        weights, idx = route_tokens(x, layer.router, top_k)
        ref = (weights[..., None] * all_out.gather(1, idx[..., None].expand(-1, -1, d_model))).sum(1)
    per_expert = layer.parameters_per_expert()
    router = layer.router.numel()
    return MoEDemo(
        tokens=int(tokens), n_experts=n_experts, top_k=top_k,
        tokens_per_expert=torch.bincount(indices.flatten(), minlength=n_experts).tolist(),
        params_total=n_experts * per_expert + router, params_active=top_k * per_expert + router,
        output_matches_reference=bool(torch.allclose(out, ref, atol=1e-5)),
    )


# =============================================================================== memory and the picker


# KV-cache allowance for catalog models without a shipped config, per token at 16-bit:
# 48 KiB × sqrt(billions of active parameters). Calibrated on the shipped GQA configs (within a factor
# of three of the exact figure for each); the notebook prints both.
KV_ALLOWANCE_BYTES = 48 * 1024


def kv_allowance_bytes_per_token(active_params_b: float, dtype: str = "fp16") -> float:
    """Rule-of-thumb KV bytes per token for a model known only by its size (see KV_ALLOWANCE_BYTES)."""
    require_positive("active_params_b", active_params_b)
    return KV_ALLOWANCE_BYTES * math.sqrt(active_params_b) * bytes_per_weight(dtype) / 2


def estimate_memory(model: str | ModelEntry, quant: str = "Q4_K_M", context: int = 4096,
                    kv_dtype: str = "fp16", overhead_gib: float | None = None) -> vram.MemoryEstimate:
    """Memory to run a catalog model for one sequence of `context` tokens, weights in `quant`.

    With a shipped config: labkit.vram's estimate (`estimate_inference`): the weights, the KV cache in
    `kv_dtype`, the activations of the prompt and the runtime's overhead (`overhead_gib` when given,
    else the overhead vram measured for that runtime).
    Without one: the published parameter count x bytes per weight (every expert of an MoE model counts:
    all must be loaded), the size-based KV allowance (`kv_allowance_bytes_per_token`), and a flat
    overhead of `overhead_gib` (0.5 GiB when not given).
    """
    entry = model if isinstance(model, ModelEntry) else get_model(model)
    quant = normalize_dtype(quant)
    kv_dtype = normalize_dtype(kv_dtype)
    require_positive("context", context)
    if overhead_gib is not None:
        require_positive("overhead_gib", overhead_gib, allow_zero=True)
    if entry.config:
        overhead = None if overhead_gib is None else overhead_gib * GIB
        return vram.estimate_inference(entry.config, quant, context=int(context), kv_dtype=kv_dtype,
                                       overhead_bytes=overhead)
    kv = kv_allowance_bytes_per_token(entry.active_b, kv_dtype) * context
    return vram.MemoryEstimate(
        weights=entry.params_b * 1e9 * bytes_per_weight(quant), kv_cache=kv, activations=0.0,
        overhead=(0.5 if overhead_gib is None else overhead_gib) * GIB, label=f"{entry.id} {quant}",
        notes=["published parameter count + KV allowance (no shipped config)"],
        inputs=dict(model=entry.id, dtype=quant, context=int(context), kv_dtype=kv_dtype, method="inference"))


@dataclass(frozen=True)
class Recommendation:
    model: ModelEntry
    memory: vram.MemoryEstimate
    specialist: bool  # the task is one of the model's specialities
    reason: str

    def as_row(self) -> dict:
        return {"model": self.model.name, "needs": f"{self.memory.total / GIB:.1f} GiB",
                "licence": self.model.licence, "why": self.reason}


def _licence_ok(entry: ModelEntry, licence: str) -> bool:
    if licence == "any":
        return True
    if licence == "commercial":
        return entry.commercial in ("yes", "conditional")
    if licence == "permissive":
        return entry.openness in ("open-weight", "truly-open")
    return entry.openness == "truly-open"


def recommend(task: str, vram_gb: float, quant: str = "Q4_K_M", context: int = 4096, licence: str = "any",
              top: int | None = 5, overhead_gib: float | None = None) -> list[Recommendation]:
    """Catalog models for `task` that fit in `vram_gb` (GiB the card shows; the fit keeps the course's
    safety margin free, see labkit.hardware.usable_memory) at `quant`, best first.

    Candidates: models whose specialities include the task, whose licence passes `licence`, whose
    context window holds `context` tokens, and whose memory estimate fits. Ranking: specialists first
    (for 'general', every general-purpose model), then the largest model that fits (within a family,
    more parameters means better results), then the newest. Each recommendation says why it is there.
    """
    if task not in TASKS:
        raise unknown("task", task, TASKS)
    require_positive("vram_gb", vram_gb)
    if licence not in LICENCE_FILTERS:
        raise unknown("licence filter", licence, LICENCE_FILTERS)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= 0):
        raise LabkitError(f"top must be a positive integer or None, got {top!r}")
    quant = normalize_dtype(quant)
    usable_gib = usable_memory(vram_gb).bytes / GIB  # what the card shows, less the safety margin
    picks = []
    for entry in load_catalog():
        if task not in entry.specialities or not _licence_ok(entry, licence) or entry.context < context:
            continue
        memory = estimate_memory(entry, quant, context, overhead_gib=overhead_gib)
        if memory.total / GIB > usable_gib:
            continue
        specialist = task != "general" and "general" not in entry.specialities
        bits = [("specialist" if specialist else "covers") + f" {task}"]
        bench = TASK_BENCHMARK.get(task)
        if bench and (score := entry.benchmark(bench)):
            bits.append(f"{bench} {score['score']:g} ({score['setting']})")
        size = f"{entry.params_b:g}B" + (f", {entry.active_b:g}B active" if entry.is_moe else "")
        rest = memory.total - memory.weights - memory.kv_cache  # activations and the runtime's overhead
        bits.append(f"{size} at {quant} ≈ {memory.weights / GIB:.1f} GiB weights + {memory.kv_cache / GIB:.1f} GiB "
                    f"KV ({context:,} tokens) + {rest / GIB:.1f} GiB overhead = {memory.total / GIB:.1f} "
                    f"of {usable_gib:.1f} GiB usable")
        bits.append(f"{entry.licence} (commercial: {entry.commercial})")
        picks.append(Recommendation(entry, memory, specialist, "; ".join(bits)))
    picks.sort(key=lambda r: (not r.specialist, -r.model.params_b, -int(r.model.release.replace("-", ""))))
    return picks if top is None else picks[:top]


# =============================================================================== tables, plots, the Hub


_FAMILY_COLOURS = {"llama": "#1f77b4", "mistral": "#ff7f0e", "gemma": "#2ca02c", "qwen": "#d62728",
                   "phi": "#9467bd", "deepseek": "#8c564b", "command-r": "#e377c2", "falcon": "#7f7f7f",
                   "yi": "#bcbd22", "olmo": "#17becf", "pythia": "#393b79", "smollm": "#637939"}


def plot_params_vs_context(entries: list[ModelEntry] | None = None):
    """Scatter: published parameters (log scale) against context length, one colour per family."""
    import matplotlib.pyplot as plt

    entries = entries if entries is not None else list(load_catalog())
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for family in dict.fromkeys(e.family for e in entries):
        group = [e for e in entries if e.family == family]
        ax.scatter([e.params_b for e in group], [e.context / 1024 for e in group], label=family,
                   color=_FAMILY_COLOURS.get(family), alpha=0.8, s=[60 if e.is_moe else 30 for e in group],
                   marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ticks = [2, 4, 8, 16, 32, 64, 128]
    ax.set_yticks(ticks, [f"{t}K" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("parameters (billions, log scale; MoE: total)")
    ax.set_ylabel("context (tokens, log scale)")
    ax.set_title("Open models: size against context")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), title="family (big dot: MoE)",
              title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_kv_bytes_per_token(names: list[str] | None = None, dtype: str = "bf16"):
    """Bars: KV-cache bytes per token of context for each shipped config."""
    import matplotlib.pyplot as plt

    names = names or list_configs()
    values = sorted((sum(vram.kv_cache_bytes_per_token(n, dtype).values()) / 1024, n) for n in names)
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(values) + 1.2))
    colours = [_FAMILY_COLOURS.get(config_info(n).get("family"), "grey") for _, n in values]
    ax.barh([n for _, n in values], [v for v, _ in values], color=colours)
    for i, (v, _) in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel(f"KV cache per token ({normalize_dtype(dtype)}, KiB)")
    ax.set_title("What one token of context costs")
    fig.tight_layout()
    return fig


def plot_moe_total_vs_active():
    """Bars: total (all experts, in memory) against active (per token, compute) parameters of the
    catalog's mixture-of-experts models, published figures."""
    import matplotlib.pyplot as plt

    moe = sorted(find_models(architecture="moe"), key=lambda e: e.params_b)
    fig, ax = plt.subplots()
    y = range(len(moe))
    ax.barh([i + 0.2 for i in y], [e.params_b for e in moe], height=0.4, label="total: must fit in memory")
    ax.barh([i - 0.2 for i in y], [e.active_b for e in moe], height=0.4, label="active per token: sets the compute")
    ax.set_yticks(list(y), [e.name for e in moe])
    ax.set_xscale("log")
    ax.set_xlabel("parameters (billions, log scale)")
    ax.set_title("Mixture of experts: memory pays for all, compute for a few")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_expert_load(demo: MoEDemo):
    """Bars: how many tokens the router sent to each expert."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(demo.n_experts), demo.tokens_per_expert)
    ax.axhline(demo.tokens * demo.top_k / demo.n_experts, color="black", ls="--", lw=1, label="perfectly balanced")
    ax.set_xlabel("expert")
    ax.set_ylabel("tokens routed")
    ax.set_title(f"Top-{demo.top_k} routing of {demo.tokens} tokens over {demo.n_experts} experts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def card_metadata(card_text: str) -> dict:
    """The YAML metadata block at the top of a model card (README.md): licence, base model, tags..."""
    import yaml

    if not isinstance(card_text, str) or not card_text.lstrip().startswith("---"):
        raise LabkitError("a model card's metadata sits between two '---' lines at the very top of README.md; "
                          "this text does not start with one")
    try:
        _, block, _ = card_text.lstrip().split("---", 2)
    except ValueError as err:
        raise LabkitError("the card's metadata block is not closed by a second '---' line") from err
    data = yaml.safe_load(block) or {}
    if not isinstance(data, dict):
        raise LabkitError("the card's metadata block is not a YAML mapping")
    return data


def _require_online(what: str) -> None:
    if not is_online():
        raise LabkitError(f"{what} needs the Hugging Face Hub, and this machine is offline "
                          "(HF_HUB_OFFLINE is set or huggingface.co is unreachable)")


def hub_search(query: str, limit: int = 5) -> list[dict]:
    """Most-downloaded Hub models whose id matches `query` (online only)."""
    from huggingface_hub import list_models

    if not isinstance(query, str) or not query.strip():
        raise LabkitError("give a search text, e.g. hub_search('Qwen2.5-Coder')")
    require_positive("limit", limit)
    _require_online("Searching the Hub")
    return [{"id": m.id, "downloads": m.downloads, "likes": m.likes, "pipeline": m.pipeline_tag}
            for m in list_models(search=query, sort="downloads", limit=int(limit))]


def hub_model_card(hf_id: str) -> dict:
    """The metadata of a model's card on the Hub (online only): licence, base model, languages, tags."""
    from huggingface_hub import ModelCard

    _require_online("Reading a model card")
    return card_metadata(str(ModelCard.load(hf_id)))


# =============================================================================== exercises


def _query_heads_per_kv_head(config: str) -> float:
    cfg = load_config(config)
    return cfg["num_attention_heads"] / cfg.get("num_key_value_heads", cfg["num_attention_heads"])


@exercise("01.kv_bytes_per_token",
          hint="2 (a key and a value) × num_hidden_layers × num_key_value_heads × head_dim × bytes per value "
               "(2 for bf16). Use the KV heads, not the attention heads; head_dim = hidden_size / "
               "num_attention_heads unless the config states it.",
          slips={"counting only K or only V (the cache stores both, x 2)": 0.5,
                 "using the query (attention) heads instead of the KV heads":
                     lambda expected, config, **_: expected * _query_heads_per_kv_head(config),
                 "counting bits where bytes are asked (16 for bf16 instead of 2)": 8.0})
def _expected_kv_bytes(config: str, dtype: str = "bf16") -> int:
    return int(sum(vram.kv_cache_bytes_per_token(config, dtype).values()))


@exercise("01.moe_active_params",
          hint="Start from the total and remove the experts a token does not visit: in every MoE layer, "
               "(experts − experts_per_token) × (3 × hidden_size × expert intermediate size).",
          slips={"giving the total parameter count, not the active one":
                     lambda expected, config: count_parameters(config).total,
                 "giving billions where a count of parameters is asked": 1e-9})
def _expected_active(config: str) -> int:
    return count_parameters(config).active


@exercise("01.embedding_share",
          hint="The input embedding table is vocab_size × hidden_size parameters; divide by the total from "
               "count_parameters(config).total. (With tied embeddings the output head reuses the same table.)",
          slips={"giving a percentage where a fraction between 0 and 1 is asked": 100.0,
                 "counting the tied embedding table twice (input and output share it)": 2.0})
def _expected_embedding_share(config: str) -> float:
    counts = count_parameters(config)
    return counts.embedding / counts.total


@validator("01.pick_model",
           hint="Filter the catalog by task and licence, estimate each model's memory at the quantization "
                "(labkit.catalog.estimate_memory) and keep one that fits; recommend() does all three.")
def _validate_pick(answer: Any, task: str, vram_gb: float, licence: str = "any", quant: str = "Q4_K_M",
                   context: int = 4096) -> str | None:
    if not isinstance(answer, str):
        return f"give the model's catalog id as a string (e.g. 'qwen2.5-7b'), got {type(answer).__name__}"
    try:
        entry = get_model(answer)
    except LabkitError:
        return f"{answer!r} is not a catalog id (see labkit.catalog.load_catalog())"
    if task not in entry.specialities:
        return f"{entry.name} is not made for '{task}' (its specialities: {', '.join(entry.specialities)})"
    if not _licence_ok(entry, licence):
        return f"{entry.name}'s licence ({entry.licence}) does not pass the '{licence}' filter"
    if entry.context < context:
        return f"{entry.name} reads at most {entry.context:,} tokens, fewer than the {context:,} needed"
    need = estimate_memory(entry, quant, context).total / GIB
    usable = usable_memory(vram_gb)
    if need * GIB > usable.bytes:
        return (f"{entry.name} needs about {need:.1f} GiB at {quant}, more than the {usable.bytes / GIB:.1f} GiB "
                f"usable of {vram_gb:g} GiB (5% stays free)")
    return None


__all__ = [
    "LICENCE_FILTERS", "TASKS", "ModelEntry", "ParameterCount", "Recommendation",
    "architecture_rows", "architecture_summary", "benchmark_rows", "card_metadata", "catalog_rows", "context_rows",
    "count_built_parameters", "count_parameters", "estimate_memory", "families", "find_models", "get_model",
    "hub_model_card", "hub_search", "kv_allowance_bytes_per_token",
    "kv_allowance_ratios", "kv_allowance_rows", "kv_allowance_summary", "licence_rows", "load_catalog", "moe_demo",
    "parameter_report_rows", "plot_expert_load",
    "plot_kv_bytes_per_token", "plot_moe_total_vs_active", "plot_params_vs_context", "published_vs_computed",
    "recommend", "route_tokens", "tiny_moe",
]
