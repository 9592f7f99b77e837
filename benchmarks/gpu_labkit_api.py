"""The GPU paths of the course, checked through labkit's public API on a CUDA machine.

    python benchmarks/gpu_labkit_api.py --out /tmp/gpu_labkit_api      # needs CUDA; about 2-3 minutes on an H100

1. `vram_measure.measure_inference` against `vram.estimate_inference` (what notebook 03 shows a learner with a
   GPU): real architectures, random weights, bf16, a few contexts.
2. Notebook 02's GPU-only cell: `runtimes.generate_transformers` with plain `generate` and with
   `cache_implementation="static"` (compiled decode step), timed by `bench.benchmark` against the
   roofline from `measure_memory_bandwidth`. The bundled GGUF is not on the GPU machine, so this
   uses Gemma 3 270M's architecture with random weights in bf16 and a word-per-id tokenizer;
   speed does not depend on the weights' values (greedy decoding with min_new_tokens keeps the
   length fixed).

Writes gpu_labkit_api.json to --out and prints every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEASURE_CELLS = [("llama-3.2-1b", 4096), ("llama-3.2-1b", 16384), ("qwen2.5-7b", 8192), ("gemma-2-2b", 8192),
                 ("llama-3.1-8b", 8192), ("mistral-7b-v0.3", 16384)]


def word_tokenizer(vocab_size: int):
    """A tokenizer with one word per id ("w0", "w1", ...): enough to drive generate on random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", eos_token="w1")


def check_memory(out: dict) -> None:
    from labkit import vram, vram_measure

    rows = []
    for model, context in MEASURE_CELLS:
        est = vram.estimate_inference(model, "bf16", context=context, new_tokens=8)
        t0 = time.perf_counter()
        meas = vram_measure.measure_inference(model, "bf16", context=context, new_tokens=8)
        err = 100 * (est.total - meas.total) / meas.total
        rows.append(dict(model=model, context=context, estimate_gib=est.total / 2**30,
                         measured_gib=meas.total / 2**30, error_percent=err, seconds=time.perf_counter() - t0))
        print(f"{model:18} ctx {context:6}: estimate {est.total / 2**30:6.2f} GiB  measured {meas.total / 2**30:6.2f} GiB"
              f"  error {err:+5.1f}%", flush=True)
    print(est.table(meas), flush=True)
    out["memory"] = rows


def check_runtimes(out: dict, new_tokens: int, runs: int) -> None:
    import torch

    import labkit
    from labkit import bench, runtimes

    loaded = labkit.build_random_model("gemma-3-270m", dtype="bf16", device="cuda")
    model = loaded.model.eval()
    tok = word_tokenizer(model.config.vocab_size)
    prompt = " ".join(f"w{10 + i}" for i in range(64))
    bandwidth = labkit.measure_memory_bandwidth("cuda", size_mib=1024)
    bytes_per_token = bench.model_bytes_per_token(model, 64 + new_tokens / 2)
    print(f"H100 measured bandwidth {bandwidth / 1e9:,.0f} GB/s; {bytes_per_token}", flush=True)
    results = []
    for label, kwargs in (("transformers generate (bf16)", {}),
                          ("transformers + static cache + compile", {"cache_implementation": "static"})):
        t0 = time.perf_counter()
        r = bench.benchmark(label, lambda p, kw=kwargs: runtimes.generate_transformers(
            model, tok, p, new_tokens, stop_at_eos=False, **kw), prompt, runs, 2, bytes_per_token.total, bandwidth)
        results.append(r)
        print(f"{r}  ({time.perf_counter() - t0:.0f} s incl. warm-up/compile)", flush=True)
    out["runtimes"] = dict(model="gemma-3-270m (random weights, bf16)", gpu=torch.cuda.get_device_name(),
                           bandwidth_gbps=bandwidth / 1e9, bytes_per_token=bytes_per_token.total,
                           new_tokens=new_tokens, runs=runs,
                           results=[dict(runtime=r.runtime, decode_tokens_per_s=r.decode_tokens_per_s,
                                         ttft_ms=r.ttft_s * 1000, percent_of_roofline=r.percent_of_roofline,
                                         roofline_tokens_per_s=r.roofline_tokens_per_s) for r in results])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_labkit_api.py needs a CUDA GPU")
    out: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    for step in (check_memory, lambda o: check_runtimes(o, args.new_tokens, args.runs)):
        try:
            step(out)
        except Exception as err:  # one broken step must not hide the other's numbers
            import traceback

            traceback.print_exc()
            out.setdefault("errors", []).append(repr(err))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_labkit_api.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
