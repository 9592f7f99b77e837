"""llama.cpp's llama-server on a GPU with the Llama 3.1 8B architecture: latency and throughput at 1 ... 64 concurrent
users, and what prefix caching, n-gram speculation and a JSON schema change. Notebooks 08 and 09 read the result.

The model is a GGUF with Llama 3.1 8B's shapes and random weights and the real Llama 3 tokenizer (written as in
benchmarks/llama_cpp_cuda.py, then quantized by llama.cpp's own quantizer). Speed does not depend on the weights'
values; what random weights write is noise, so the speculation acceptance and the JSON answers here say nothing
about quality (notebook 09 measures those on the real bundled model). Every measurement goes through
labkit.loadgen and labkit.serving, the same code the notebook runs.

    # on the GPU machine, after benchmarks/gpu_setup.sh (llama-cpp-python + llama-server built with CUDA):
    PYTHONPATH=/tmp/labkit-site:$PWD python3 benchmarks/serving_gpu.py --out /tmp/serving_gpu
    # (llama-server found next to llama-cpp-python in /tmp/labkit-site/bin, or pass --llama-server PATH; the Llama 3
    #  vocabulary comes from the sdist in .gpu-wheels/, or pass --vocab models/ggml-vocab-llama-bpe.gguf)

    # a CPU smoke test of the whole path with the bundled model and tiny sizes:
    python benchmarks/serving_gpu.py --model bundled --device cpu --users 1 2 --max-tokens 8 --out /tmp/serving-o

Writes serving_gpu.json and serving_gpu.md to --out (copy the JSON to datasets/results/serving_gpu.json to ship it).
Each part is written as soon as it is measured; --budget-s skips the parts that would start after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def gpu_name_and_bandwidth(device: str) -> tuple[str, float]:
    """The device's name and measured copy bandwidth (bytes/s). On CUDA, torch runs in a child process: torch's CUDA
    and ggml-cuda in one process crashed on the H100 image (benchmarks/llama_cpp_cuda.py)."""
    if device == "cuda":
        code = ("import torch, labkit; print(torch.cuda.get_device_name()); "
                "print(labkit.measure_memory_bandwidth('cuda', size_mib=1024))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        name, bandwidth = out.stdout.strip().splitlines()[-2:]
        return name, float(bandwidth)
    import labkit

    return f"CPU ({os.cpu_count()} cores)", labkit.measure_memory_bandwidth("cpu", size_mib=256)


VOCAB_IN_SDIST = "vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf"


def find_vocab(work: Path) -> Path:
    """llama.cpp's Llama 3 vocabulary file, taken from the llama-cpp-python sdist that gpu_wheels.py carries."""
    import tarfile

    root = Path(__file__).resolve().parent.parent
    for sdist in sorted((root / ".gpu-wheels").glob("**/llama_cpp_python-*.tar.gz")):
        with tarfile.open(sdist) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(VOCAB_IN_SDIST)), None)
            if member is not None:
                target = work / "ggml-vocab-llama-bpe.gguf"
                target.write_bytes(tar.extractfile(member).read())
                return target
    sys.exit(f"no --vocab given and no llama-cpp-python sdist under .gpu-wheels/ holding {VOCAB_IN_SDIST}")


def make_model(args) -> Path:
    """The bundled model (smoke test), a given GGUF, or the random-weights 8B written and quantized here."""
    if args.model == "bundled":
        from labkit.models import bundled_gguf_path

        return bundled_gguf_path()
    if args.model:
        return Path(args.model)
    from llama_cpp_cuda import quantize, write_random_gguf

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    f16 = work / "llama8b-random-F16.gguf"
    if not f16.exists():  # the same file every time (fixed seed): reuse it
        t0 = time.perf_counter()
        write_random_gguf(Path(args.vocab) if args.vocab else find_vocab(work), f16, args.layers)
        print(f"wrote {f16} ({f16.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.type == "F16":
        return f16
    target = work / f"llama8b-random-{args.type}.gguf"
    if not target.exists():
        t0 = time.perf_counter()
        quantize(f16, target, args.type, os.cpu_count() or 8)
        print(f"quantized to {args.type} ({target.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return target


def server_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("version:")), "?")


def markdown(out: dict) -> str:
    from labkit import loadgen, serving

    slo = loadgen.Slo(out["slo"]["ttft_s"], out["slo"]["itl_s"])
    lines = [f"# llama-server on {out['device']}: {out['model']}", "",
             f"{out['date']} · `{out['command']}`", "",
             f"llama-server {out['llama_server_version']}, {out['slots']} slots of {out['ctx_per_slot']} tokens, "
             f"{out['gguf_type']} ({out['file_gb']:.2f} GB), {out['bytes_per_token'] / 1e9:.2f} GB read per token, "
             f"measured bandwidth {out['bandwidth_gbps']:,.0f} GB/s → batch-1 roofline "
             f"{out['roofline_tokens_per_s']:,.0f} tok/s. Prompts: `serving.prompt_mix` (short questions and paragraphs "
             f"in turn, {out.get('prompt_tokens_mean', float('nan')):.0f} tokens on average), {out['max_tokens']} new "
             f"tokens each (end of sequence ignored), prefix cache off, greedy; {out['requests_per_user']} requests per "
             "user.", "",
             "## Concurrency", "", serving.gpu_sweep_markdown(out, slo), ""]
    best = loadgen.max_users_meeting(out["sweep"], slo)
    lines += [f"Most users meeting {slo} at P99: {best}.", ""]
    if any(part in out for part in ("prefix_cache", "speculation", "json_schema")):
        lines += ["## Prefix cache, JSON schema, speculation", "", serving.gpu_features_markdown(out), "",
                  "Random weights: what they write is noise, so the JSON validity without the schema and the "
                  "speculation acceptance say nothing about a real model; the times do.", ""]
    if out.get("skipped"):
        lines += ["Skipped (time budget): " + ", ".join(out["skipped"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-server", default=None, help="the llama-server binary (default: labkit's search)")
    ap.add_argument("--model", default=None, help="a GGUF to serve, or 'bundled' (default: the random 8B)")
    ap.add_argument("--vocab", default=None, help="llama.cpp's models/ggml-vocab-llama-bpe.gguf (for the 8B; "
                                                  "default: taken from the sdist in .gpu-wheels/)")
    ap.add_argument("--work", default="/tmp/gguf", help="room for the 8B GGUF files (~21 GB)")
    ap.add_argument("--layers", type=int, default=None, help="smoke test: fewer layers in the random model")
    ap.add_argument("--type", default="Q4_K_M", choices=["Q4_K_M", "Q8_0", "F16"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--requests-per-user", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--ctx-per-slot", type=int, default=4096)
    ap.add_argument("--budget-s", type=float, default=270, help="start no new part after this many seconds")
    args = ap.parse_args()

    from labkit import bench, llama_server, loadgen, serving

    t_start = time.perf_counter()
    binary = args.llama_server or llama_server.llama_server_path()
    if binary is None:
        sys.exit(llama_server.how_to_get_llama_server())
    device, bandwidth = gpu_name_and_bandwidth(args.device)
    print(f"{device}: measured bandwidth {bandwidth / 1e9:,.0f} GB/s", flush=True)
    model_path = make_model(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    users = sorted(set(args.users))
    prompts = serving.prompt_mix(max(users) * args.requests_per_user, args.max_tokens)
    per_token = bench.gguf_bytes_per_token(model_path, 150 + args.max_tokens / 2)
    slo = loadgen.Slo()
    out: dict = {
        "device": device, "bandwidth_gbps": bandwidth / 1e9, "llama_server": str(binary),
        "llama_server_version": server_version(str(binary)), "model_file": model_path.name,
        "model": ("Llama 3.1 8B architecture, random weights" if args.model is None else model_path.stem),
        "gguf_type": args.type if args.model is None else "as given", "file_gb": model_path.stat().st_size / 1e9,
        "bytes_per_token": per_token.total, "roofline_tokens_per_s": bandwidth / per_token.total,
        "slots": max(users), "ctx_per_slot": args.ctx_per_slot, "max_tokens": args.max_tokens,
        "requests_per_user": args.requests_per_user, "slo": {"ttft_s": slo.ttft_s, "itl_s": slo.itl_s},
        "date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "skipped": [],
    }
    gpu = {"n_gpu_layers": 999} if args.device == "cuda" else {}

    def save() -> None:
        (out_dir / "serving_gpu.json").write_text(json.dumps(out, indent=2))
        (out_dir / "serving_gpu.md").write_text(markdown(out))

    def budget_left(part: str) -> bool:
        if time.perf_counter() - t_start < args.budget_s:
            return True
        out["skipped"].append(part)
        print(f"budget spent: skipping {part}", flush=True)
        return False

    def server(slots: int, speculation: str | None = None) -> llama_server.LlamaCppServer:
        return llama_server.LlamaCppServer(model_path, slots=slots, ctx_per_slot=args.ctx_per_slot, speculation=speculation,
                                      binary=binary, alias="llama-8b-random" if args.model is None else model_path.stem,
                                      startup_timeout_s=300, **gpu)

    with server(max(users)) as srv:
        print(f"{srv} ready in {srv.startup_s:.1f} s", flush=True)
        out["sweep"] = []
        for u in users:
            if not budget_left(f"{u} users"):
                break
            r = loadgen.run_load(srv.base_url, srv.model, prompts, users=u, requests=u * args.requests_per_user,
                                 max_tokens=args.max_tokens, extra_body={"cache_prompt": False}, time_limit_s=120,
                                 progress=False)
            print(r, flush=True)
            out["sweep"].append(r.summary(slo))
            out["prompt_tokens_mean"] = r.mean_prompt_tokens
            save()

        if budget_left("prefix cache"):
            # a long shared system prompt that fits a slot: ~130 tokens a paragraph
            shared = serving.shared_prefix_prompts(8, 32, paragraphs=max(1, min(12, args.ctx_per_slot // 300)))
            out["prefix_cache"] = {}
            for cache in (True, False):  # on first: nothing of this prefix is cached before
                r = loadgen.run_load(srv.base_url, srv.model, shared, users=1, requests=8, max_tokens=32,
                                     extra_body={"cache_prompt": cache}, time_limit_s=60, progress=False,
                                     label=f"prefix cache {'on' if cache else 'off'}")
                print(r, flush=True)
                out["prefix_cache"]["on" if cache else "off"] = {
                    **r.summary(slo), "prompt_tokens": r.records[0].prompt_tokens,
                    "cached_tokens_p50": loadgen.percentile([x.cached_tokens or 0 for x in r.completed], 50)}
            save()

        if budget_left("json schema"):
            json_users = min(8, max(users))
            weather = serving.weather_prompts(2 * json_users)
            out["json_schema"] = {}
            for label, extra in (("off", {}), ("on", {"json_schema": serving.WEATHER_SCHEMA})):
                # random weights write long strings inside the grammar too: room for the longest valid object
                r = loadgen.run_load(srv.base_url, srv.model, weather, users=json_users, requests=2 * json_users,
                                     max_tokens=96,
                                     extra_body=extra, ignore_eos=False, time_limit_s=60, progress=False,
                                     label=f"json schema {label}")
                print(r, flush=True)
                share = serving.json_share(r, serving.WEATHER_SCHEMA)
                out["json_schema"][label] = {**r.summary(slo), "parse": share["parse"], "valid": share["valid"]}
            save()

    if budget_left("speculation"):
        out["speculation"] = {}
        for spec in (None, "ngram"):
            with server(1, spec) as srv:
                for name, task in (("copy", serving.copy_prompts(3, args.max_tokens)),
                                   ("free-form", serving.freeform_prompts(3, args.max_tokens))):
                    r = loadgen.run_load(srv.base_url, srv.model, task, users=1, requests=3, max_tokens=args.max_tokens,
                                         time_limit_s=90, progress=False, label=f"{name}, speculation {spec or 'off'}")
                    print(r, flush=True)
                    out["speculation"].setdefault(name, {})[spec or "off"] = {
                        **serving.speculation_stats(r), "tokens_per_s": r.tokens_per_s}
        save()
    out["total_s"] = time.perf_counter() - t_start
    save()
    print(f"done in {out['total_s']:.0f} s → {out_dir / 'serving_gpu.json'}", flush=True)


if __name__ == "__main__":
    main()
