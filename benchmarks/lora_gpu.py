"""LoRA and QLoRA training steps on a real architecture (random weights): measured peak memory beside
`labkit.vram.estimate_training`, with and without gradient checkpointing, and tokens/s.

    python benchmarks/lora_gpu.py --out /tmp/lora_gpu                       # CUDA: Llama 3.1 8B, 2,048 tokens
    python benchmarks/lora_gpu.py --out /tmp/lora_cpu --tiny                 # any machine: a 2-layer copy, 64 tokens

Each setup: the model in bf16 (LoRA) or bitsandbytes NF4 with double quantization (QLoRA; the base is quantized on
the GPU from random bf16 weights), peft LoRA r=16 on all linear layers (the source material's config), then 3 AdamW
steps on random tokens with the loss on every position. Measured = torch.cuda.max_memory_allocated() over the steps
+ the process's CUDA context (NVML); on CPU, the weights plus the peak of tensors created during the steps.
QLoRA here skips `prepare_model_for_kbit_training` (it would cast the embeddings and norms to fp32, which the
estimate does not assume); notebook 07 uses it on the small model.

Writes lora_gpu.json and lora_gpu.md to --out and prints every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SETUPS = [("lora", False), ("lora", True), ("qlora", False), ("qlora", True)]


def build(model_name: str, method: str, device: str, tiny: bool):
    import torch

    from labkit import models, vram_measure

    overrides = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, vocab_size=1024) if tiny else {}
    if method == "qlora" and device == "cuda" and not tiny:
        return vram_measure.load_for_measurement(model_name, "nf4", "cuda")
    dtype = "bf16" if device == "cuda" else "fp32"
    net = models.build_random_model(model_name, dtype=dtype, device=device, **overrides).model
    if method == "qlora" and device == "cuda":  # tiny on CUDA: quantize the small copy the same way
        state, config, cls = net.state_dict(), net.config, type(net)
        del net
        net = cls.from_pretrained(None, config=config, state_dict=state,
                                  quantization_config=vram_measure.bitsandbytes_config("nf4"),
                                  device_map={"": torch.cuda.current_device()}, dtype=torch.bfloat16)
    return net


def run_setup(model_name: str, method: str, checkpointing: bool, device: str, tiny: bool, seq_len: int,
              rank: int) -> dict:
    import torch

    from labkit import lora

    if method == "qlora" and device != "cuda":
        return {"method": method, "gradient_checkpointing": checkpointing, "skipped": "QLoRA is measured on CUDA here"}
    start = time.perf_counter()
    net = build(model_name, method, device, tiny)
    if checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model = lora.add_lora(net, rank=rank, alpha=2 * rank, target_modules="all-linear")
    trainable, total = lora.trainable_parameters(peft_model)
    built = time.perf_counter() - start
    loaded = torch.cuda.memory_allocated() if device == "cuda" else 0  # weights + adapters, before any step
    mem = lora.training_memory(peft_model, "qlora" if method == "qlora" else "lora", seq_len=seq_len, rank=rank,
                               target_modules="all-linear", dtype="bf16" if device == "cuda" else "fp32",
                               gradient_checkpointing=checkpointing, steps=3)
    est = mem.details["estimate"]
    row = {"method": method, "gradient_checkpointing": checkpointing, "seq_len": seq_len, "rank": rank,
           "trainable": trainable, "parameters": total, "measured_gib": mem.measured / 2**30,
           "estimate_gib": mem.estimate / 2**30, "error": mem.error, "tokens_per_s": mem.tokens_per_s,
           "estimate_parts_gib": {k: v / 2**30 for k, v in est.parts().items()},
           "loaded_gib": loaded / 2**30, "build_s": built}
    print(f"{method:5s} ckpt={checkpointing!s:5s} trainable {trainable:,} | {mem}", flush=True)
    del peft_model, net
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def markdown(result: dict) -> str:
    lines = [f"# LoRA / QLoRA training memory: estimate vs measured ({result['model']}, random weights)", "",
             f"Device: {result['device_name']} · torch {result['torch']} · transformers {result['transformers']} · "
             f"peft {result['peft']} · bitsandbytes {result['bitsandbytes']} · {result['date']}", "",
             f"Command: `{result['command']}`", "",
             f"peft LoRA r={result['rank']} on all linear layers, batch 1 x {result['seq_len']} tokens, 3 AdamW steps, "
             "loss on every position. Estimate: `vram.estimate_training(config, method, lora_rank, 'all-linear', "
             "seq_len, gradient_checkpointing)`.", "",
             "| method | gradient checkpointing | trainable | measured GiB | estimate GiB | error | tokens/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "skipped" in r:
            continue
        lines.append(f"| {r['method']} | {'yes' if r['gradient_checkpointing'] else 'no'} | {r['trainable']:,} | "
                     f"{r['measured_gib']:.2f} | {r['estimate_gib']:.2f} | {r['error']:+.1%} | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer copy with short sequences (CPU smoke run)")
    args = parser.parse_args()

    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq_len = args.seq_len or (64 if args.tiny else 2048)
    rows = []
    for method, checkpointing in SETUPS:
        try:
            rows.append(run_setup(args.model, method, checkpointing, device, args.tiny, seq_len, args.rank))
        except Exception as err:  # keep the other setups' numbers
            print(f"{method} ckpt={checkpointing}: FAILED {type(err).__name__}: {err}", flush=True)
            rows.append({"method": method, "gradient_checkpointing": checkpointing, "skipped": f"{type(err).__name__}: {err}"})
    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except ImportError:
        bnb = "not installed"
    result = {"model": args.model + (" (tiny 2-layer copy)" if args.tiny else ""), "seq_len": seq_len, "rank": args.rank,
              "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "CPU",
              "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
              "bitsandbytes": bnb, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "command": "python " + " ".join(sys.argv), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lora_gpu.json").write_text(json.dumps(result, indent=2))
    (out / "lora_gpu.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
