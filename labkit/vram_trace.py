"""Memory of models labkit has no formula for: transformers' own forward (and backward) pass run on PyTorch's
meta device, where every tensor has a shape and a lifetime but no memory. `trace_prefill` counts what the prefill
of `generate` makes, `trace_training_step` what a training step's forward and backward keep; `experts_dispatch`
reads how transformers runs a mixture of experts (the one kind a trace cannot follow: a loop over the experts
the router picked). labkit.vram turns these into estimates with a band; docs/vram_model.md has the checks.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from functools import lru_cache
from typing import Any

from .errors import LabkitError


class TensorMemoryTracker:
    """Count the bytes of every tensor PyTorch creates inside a `with` block, on any device, and
    keep the peak: the CPU counterpart of torch.cuda.max_memory_allocated().

        with TensorMemoryTracker() as t:
            model.generate(...)
        t.peak   # bytes alive at the highest point (tensors that existed before are not counted)

    It watches every operation (a TorchDispatchMode), so it slows the block down a little; views
    share their base's storage and are counted once.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return tracker._run(func, args, kwargs or {})

        self._mode = _Mode()
        self._live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0
        self.skip_devices: tuple[str, ...] = ("meta",)  # tensors on the meta device hold no memory

    def __enter__(self) -> TensorMemoryTracker:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._sweep()

    def _sweep(self) -> None:
        for key, (ref, size) in list(self._live.items()):
            if ref.expired():
                del self._live[key]
                self.current -= size

    def _run(self, func, args, kwargs):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        self._sweep()
        out = func(*args, **kwargs)
        self._sweep()
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type not in self.skip_devices}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type not in self.skip_devices:
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self._live and ref.cdata not in inputs:
                    self._live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
                    self._made(ref.cdata, func)
        if self.current > self.peak:
            self.peak = self.current
            self._at_peak()
        return out

    def _made(self, key: int, func: Any) -> None:
        """Called for every new storage (a hook for subclasses)."""

    def _at_peak(self) -> None:
        """Called whenever a new peak is reached (a hook for subclasses)."""


class MetaTrace(TensorMemoryTracker):
    """TensorMemoryTracker on the meta device too (meta tensors hold no memory, but their storages still have a
    size and a lifetime), keeping at the peak which storages were alive and which operation made each."""

    def __init__(self):
        super().__init__()
        self.skip_devices = ()
        self._maker: dict[int, str] = {}
        self.at_peak: dict[int, tuple[str, int]] = {}

    def _made(self, key: int, func: Any) -> None:
        self._maker[key] = str(getattr(func, "__name__", func)).split(".")[0]

    def _at_peak(self) -> None:
        self.at_peak = {k: (self._maker.get(k, "?"), size) for k, (_, size) in self._live.items()}


EXPERT_DISPATCH = {
    "grouped": "only the chosen experts, grouped by expert (transformers' experts interface: grouped_mm for the "
               "prompt; batched_mm, which gathers each chosen expert's weights per token, to decode on a GPU)",
    "every expert": "every expert on every token (the router only weights their outputs): memory grows with "
                    "experts x tokens",
    "loop": "a Python loop over the experts the router picked: how much each step holds depends on how many "
            "tokens go to one expert",
}
LOOP_MARKERS = ("for expert_idx in", "for expert in", "for i, expert in", ".nonzero(", "torch.where(expert_mask",
                 ".tolist()")


@lru_cache(maxsize=64)
def experts_dispatch(model_type: str) -> str:
    """How transformers' modeling code for `model_type` runs its experts (see EXPERT_DISPATCH), read from that
    code: classes decorated with @use_experts_implementation dispatch the chosen experts through the experts
    interface; otherwise a loop over the routed experts, or (no loop at all) every expert on every token.
    tests/test_vram.py checks the reading against the meta device: only "loop" cannot be traced there."""
    import importlib
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        source = inspect.getsource(module)
    except (ImportError, OSError, TypeError):
        import transformers

        cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, ""), None)
        source = inspect.getsource(inspect.getmodule(cls)) if cls is not None else ""
    if "@use_experts_implementation" in source:
        return "grouped"
    if any(marker in source for marker in LOOP_MARKERS):
        return "loop"
    return "every expert"


@contextlib.contextmanager
def _sdpa_as_kernels(device: str):
    """On the meta device SDPA would run its math path (N x N scores). Stand in for the fused kernels
    transformers gets on a GPU: the output (laid out as the kernels lay it out), and the boolean mask turned
    into the query's dtype while the kernel runs (on a CPU too). On a CPU a value width other than the
    key's has no fused kernel: the math path is what runs there, so it is traced as is."""
    import torch
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if device == "cpu" and query.shape[-1] != value.shape[-1]:
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        mask = None
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # (on a CPU, as an additive float mask)
            mask = torch.empty(attn_mask.shape, dtype=query.dtype, device=query.device)
        b, h, n = query.shape[:3]
        out = torch.empty(b, n, h, value.shape[-1], dtype=query.dtype, device=query.device).transpose(1, 2)
        del mask
        return out

    class Fused(torch.autograd.Function):
        """Training: what the flash / memory-efficient kernels keep for backward (q, k, v, the output and
        the float32 log-sum-exp per head and position, the converted mask), and the gradients they return."""

        @staticmethod
        def forward(ctx, query, key, value, mask):
            out = kernel(query, key, value, attn_mask=mask)
            lse = torch.empty(query.shape[:3], dtype=torch.float32, device=query.device)
            kept = torch.empty(mask.shape, dtype=query.dtype, device=query.device) if mask is not None else None
            ctx.save_for_backward(query, key, value, out, lse, kept)
            return out

        @staticmethod
        def backward(ctx, grad):
            query, key, value, *_ = ctx.saved_tensors
            return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value), None

    def dispatch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        # a CPU has no fused kernel for a value width other than the key's, nor for dropout: the math path runs
        if device == "cpu" and (query.shape[-1] != value.shape[-1] or dropout_p > 0):
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            mask = attn_mask if attn_mask is not None and attn_mask.dtype == torch.bool else None
            return Fused.apply(query, key, value, mask)
        return kernel(query, key, value, attn_mask=attn_mask)

    import transformers.masking_utils as masking

    autocast = torch.autocast

    class MetaAutocast(autocast):  # peft's ParamWrapper opens a disabled autocast on its weight's device
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    packed = masking.find_packed_sequence_indices
    F.scaled_dot_product_attention = dispatch
    masking.find_packed_sequence_indices = lambda position_ids: None  # one sequence per row: what it finds
    torch.autocast = MetaAutocast
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        masking.find_packed_sequence_indices = packed
        torch.autocast = autocast


@lru_cache(maxsize=4)
def _meta_model(config_json: str, dtype: str, attention: str):
    import torch
    from transformers import AutoModelForCausalLM

    from .dtypes import torch_dtype
    from .models import to_transformers_config

    cfg = to_transformers_config(json.loads(config_json))
    cfg.quantization_config = None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype), attn_implementation=attention)
    return net.eval()


class DataDependent(LabkitError):
    """The model's forward pass decides shapes from values (a loop over the experts tokens were routed to):
    it cannot be traced on the meta device."""


@lru_cache(maxsize=32)
def lora_trainable_parameters(config_json: str, rank: int, targets: tuple[str, ...] | str) -> int:
    """The parameters peft's LoRA trains on this model, counted on the meta device (for model types without a
    formula, whose layers labkit does not know by name)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from .models import to_transformers_config

    cfg = to_transformers_config(json.loads(config_json))
    cfg.quantization_config = None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        net = get_peft_model(net, LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                                             target_modules=targets if isinstance(targets, str) else list(targets)))
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@lru_cache(maxsize=32)
def trace_training_step(config_json: str, method: str, dtype: str, rank: int, targets: tuple[str, ...] | str,
                        seq_len: int, batch: int, checkpointing: bool, device: str) -> tuple[float, tuple[tuple[str, float], ...]]:
    """One forward and backward pass of a training step on the meta device, the loss on every position
    (peft's LoRA on the base for method lora/qlora; no optimizer): the most bytes alive at once beyond the
    weights (saved tensors, gradients, temporaries), and the largest groups at that moment."""
    import torch
    from transformers import AutoModelForCausalLM

    from .dtypes import torch_dtype
    from .models import to_transformers_config

    cfg = to_transformers_config(json.loads(config_json))
    cfg.quantization_config = None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype))
        if checkpointing:
            # (no RNG state to keep: the meta device has none, and the trace has no dropout)
            net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                             "preserve_rng_state": False})
        if method != "full":
            from peft import LoraConfig, get_peft_model

            net = get_peft_model(net, LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                                                 target_modules=targets if isinstance(targets, str) else list(targets)))
    net.train()
    ids = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    trace = MetaTrace()
    try:
        with _sdpa_as_kernels(device), warnings.catch_warnings(), trace:
            warnings.simplefilter("ignore")
            loss = net(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            del loss
    except (NotImplementedError, RuntimeError) as err:
        if "meta" in str(err) or "data-dependent" in str(err) or "nonzero" in str(err):
            raise DataDependent(f"{cfg.model_type}: the forward pass depends on the values ({str(err).splitlines()[0][:120]})") from err
        raise
    groups: dict[str, float] = {}
    for op, size in trace.at_peak.values():
        groups[op] = groups.get(op, 0.0) + size
    return float(trace.peak), tuple(sorted(groups.items(), key=lambda kv: -kv[1])[:6])


@lru_cache(maxsize=64)
def trace_prefill(config_json: str, compute: str, context: int, batch: int, attention: str,
                  device: str, use_cache: bool = True) -> tuple[float, float, float, tuple[tuple[str, float], ...], float]:
    """Run the prefill of `generate` (the prompt, with a cache unless `use_cache` is off, logits of the last
    position) on the meta device and count every tensor it makes. Returns (peak bytes, KV cache held at the
    peak, KV cache at the end, the largest groups alive at the peak as (operation, bytes), bytes still alive
    at the end: the cache and the logits)."""
    import torch

    net = _meta_model(config_json, compute, attention)
    ids = torch.zeros(batch, context, dtype=torch.long, device="meta")
    trace = MetaTrace()
    try:
        with torch.no_grad(), _sdpa_as_kernels(device), warnings.catch_warnings(), trace:
            warnings.simplefilter("ignore")
            out = net(input_ids=ids, use_cache=use_cache, logits_to_keep=1)
    except (NotImplementedError, RuntimeError) as err:
        if "meta" in str(err) or "data-dependent" in str(err) or "nonzero" in str(err):
            raise DataDependent(f"{net.config.model_type}: the forward pass depends on the values ({str(err).splitlines()[0][:120]})") from err
        raise
    from torch.multiprocessing.reductions import StorageWeakRef

    cache = {StorageWeakRef(t.untyped_storage()).cdata: t.untyped_storage().nbytes()
             for layer in getattr(getattr(out, "past_key_values", None), "layers", []) for t in (getattr(layer, "keys", None),
                                                                              getattr(layer, "values", None))
             if isinstance(t, torch.Tensor)}
    kv_at_peak = float(sum(size for key, (_, size) in trace.at_peak.items() if key in cache))
    groups: dict[str, float] = {}
    for key, (op, size) in trace.at_peak.items():
        if key not in cache:
            groups[op] = groups.get(op, 0.0) + size
    top = tuple(sorted(groups.items(), key=lambda kv: -kv[1])[:6])
    return float(trace.peak), kv_at_peak, float(sum(cache.values())), top, float(trace.current)
