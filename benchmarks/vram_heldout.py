"""labkit.vram on families it has no formula for (held out: no constant was fitted on them), in ONE command.

    # a CUDA GPU (H100/H200, about 5 minutes; bitsandbytes for the nf4 / int8 / QLoRA cells): measures only
    python benchmarks/vram_heldout.py run --out /tmp/heldout --budget-s 290

    # anywhere: compare the current estimator with a run's measurements, write the tables (commit them)
    python benchmarks/vram_heldout.py report --raw /tmp/heldout/vram_heldout_raw.json --out datasets/results

    # any machine, no GPU: the same cells on 2-layer copies of the same configs, tensors counted on the CPU
    python benchmarks/vram_heldout.py run --out /tmp/heldout-cpu --tiny

The families are the real configs in datasets/heldout_configs/ (index.json says what each exercises): model
types labkit has no formula for, so their estimates are traced on the meta device, carry a band, or refuse.
Random weights at true size (memory does not depend on the values). Three groups, each in its own process
(bitsandbytes' kernels join the CUDA context once loaded, so they come last):

- bf16: inference (a random prompt of N tokens + 8 generated, `generate`) at 1k, 8k and 32k tokens; training
  steps (`labkit.vram_measure.measure_training`: forward with the loss on every position, backward, AdamW, twice) at
  2k and 4k tokens with and without gradient checkpointing: LoRA r=16 on all linear layers, full fine-tuning
  of the small ones (the model in bf16; and one formula family in mixed precision, as a check at true size);
- bnb: inference in nf4 and int8; QLoRA (an NF4 base).
Measured = torch.cuda.max_memory_allocated() + this process's CUDA context (NVML), as in vram_accuracy.py. Each
cell resets the peak statistics and empties the allocator's cache first. Cells run in priority order and stop
when the group's share of --budget-s is spent; raw numbers are written as they come.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.paths import datasets_dir, results_dir  # noqa: E402  (labkit from this checkout)

HELD_OUT = datasets_dir() / "heldout_configs"
RESULTS = results_dir()
NEW_TOKENS = 8
RANK = 16


def cells(tiny: bool) -> dict[str, list[dict]]:
    """The cells of each group, in priority order (a group stops where its share of the time budget ends)."""
    ctx = (256, 1024) if tiny else (1024, 8192, 32768)
    seqs = (128,) if tiny else (2048, 4096)

    def infer(arch: str, dtype: str = "bf16", contexts: tuple[int, ...] = ctx) -> list[dict]:
        return [dict(kind="inference", arch=arch, dtype=dtype, context=n) for n in contexts]

    def train(arch: str, method: str, lengths: tuple[int, ...] = seqs, **extra) -> list[dict]:
        return [dict(kind="training", arch=arch, method=method, dtype="bf16", seq_len=s, checkpointing=c, **extra)
                for s in lengths for c in (False, True)]

    llama4 = ctx[:2] + (() if tiny else (16384,))  # every expert on every token: 16 x the tokens, 32k does not fit
    bf16 = (infer("starcoder2-3b") + infer("gemma-2b") + infer("moonlight-16b-a3b") + infer("smollm3-3b")
            + infer("llama-4-scout-17b-16e-4-layers", contexts=llama4)
            + train("starcoder2-3b", "lora") + train("gemma-2b", "lora")
            + train("ernie-4.5-0.3b", "full", (128,) if tiny else (512, 4096), mixed_precision=False)
            # a formula family in mixed precision (autocast over fp32 weights): the CPU-derived model at true size
            + train("llama-3.2-1b", "full", seqs[:1], mixed_precision=True, formula=True)
            + infer("stablelm-2-1_6b") + train("smollm3-3b", "lora") + train("stablelm-2-1_6b", "lora")
            + train("stablelm-2-1_6b", "full", seqs[:1], mixed_precision=False)
            + infer("granite-3.1-2b") + infer("ernie-4.5-0.3b")
            # no formula and autocast: the estimate refuses; measured all the same
            + [dict(kind="training", arch="granite-3.1-2b", method="full", dtype="bf16", seq_len=seqs[0],
                    checkpointing=False, mixed_precision=True)]
            # peft adapts this MoE's experts (ParamWrapper: merged expert weights); checkpointed to fit
            + [dict(kind="training", arch="moonlight-16b-a3b", method="lora", dtype="bf16", seq_len=seqs[0],
                    checkpointing=True)])
    bnb = (infer("starcoder2-3b", "nf4", ctx[:2]) + infer("smollm3-3b", "nf4", ctx[:2])
           + train("starcoder2-3b", "qlora", seqs[:1]) + infer("gemma-2b", "nf4", ctx[:2])
           + infer("stablelm-2-1_6b", "int8", ctx[:2]) + infer("granite-3.1-2b", "int8", ctx[:2])
           + train("smollm3-3b", "qlora", seqs[:1]))
    return {"bf16": bf16, "bnb": bnb}


def tiny_config(name: str) -> dict:
    """A 2-layer copy of a held-out config (same model type and structure, small sizes) for the CPU check."""
    raw = json.loads((HELD_OUT / f"{name}.json").read_text()) if (HELD_OUT / f"{name}.json").exists() else None
    if raw is None:  # a shipped (formula) config
        from labkit.models import load_config

        raw = load_config(name)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=2048)
    kv = {"starcoder2": 2, "stablelm": 4, "gemma": 1, "granite": 2, "smollm3": 2, "deepseek_v3": 4,
          "llama4_text": 2, "ernie4_5": 2, "llama": 2}[raw["model_type"]]
    small["num_key_value_heads"] = kv
    if "head_dim" in raw:
        small["head_dim"] = 16
    if raw["model_type"] == "starcoder2":
        small["sliding_window"] = 96
    if raw["model_type"] == "smollm3":
        small.update(layer_types=["full_attention"] * 2, no_rope_layers=[1, 0], pad_token_id=0)
    if raw["model_type"] == "deepseek_v3":
        small.update(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, moe_intermediate_size=32,
                     n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2)
    if raw["model_type"] == "llama4_text":
        small.update(intermediate_size=64, intermediate_size_mlp=128, num_local_experts=4, attention_chunk_size=64,
                     moe_layers=[0, 1], no_rope_layers=[1, 0], pad_token_id=0)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(raw.get(key), int) and raw[key] >= 2048 and key not in small:
            small[key] = 0
    if isinstance(raw.get("eos_token_id"), list):
        small["eos_token_id"] = 0
    return {**raw, **small}


def model_source(name: str, tiny: bool):
    """What labkit.vram is given: the held-out config's path (a shipped name for a formula family)."""
    if tiny:
        return tiny_config(name)
    path = HELD_OUT / f"{name}.json"
    return str(path) if path.exists() else name


def log(*args) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------- measuring


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
            "device": device}
    for package in ("peft", "bitsandbytes"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda)
    return info


_LOADED: dict = {}  # the model of the last inference cell, kept for the next cell of the same arch and dtype


def measure_inference_cell(cell: dict, source, device: str, new_tokens: int) -> dict:
    """Generate on a random prompt and return the numbers for one inference cell (the model is loaded once for
    the consecutive cells of one arch and dtype; the peak statistics are reset for each cell)."""
    import torch

    from labkit import vram_measure

    key = (cell["arch"], cell["dtype"])
    if _LOADED.get("key") != key:
        _LOADED.clear()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated() if device == "cuda" else 0
        net = vram_measure.load_for_measurement(source, cell["dtype"], device)
        if device == "cuda":
            torch.cuda.synchronize()
            weights = torch.cuda.memory_allocated() - base
        else:
            weights = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
        _LOADED.update(key=key, net=net, base=base, weights=weights)
    net, base, weights = _LOADED["net"], _LOADED["base"], _LOADED["weights"]
    if device == "cuda":
        from vram_accuracy import run_generate

        gc.collect()
        torch.cuda.empty_cache()
        numbers = run_generate(net, cell["context"], 1, new_tokens, base)
        numbers["peak_allocated_bytes"] -= base
        numbers.update(weights_bytes=weights, measured_bytes=numbers["peak_allocated_bytes"] + numbers["context_bytes"])
        return numbers
    ids = torch.randint(3, 1000, (1, cell["context"]))  # tensors on the CPU: the weights plus what generate makes
    with torch.no_grad(), vram_measure.TensorMemoryTracker() as tracker:
        net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return {"weights_bytes": weights, "measured_bytes": weights + tracker.peak, "context_bytes": 0}


def measure_training_cell(cell: dict, source, device: str) -> dict:
    from labkit import vram_measure

    m = vram_measure.measure_training(source, cell["method"], cell["dtype"], seq_len=cell["seq_len"], lora_rank=RANK,
                                      gradient_checkpointing=cell["checkpointing"],
                                      mixed_precision=cell.get("mixed_precision", True), device=device, steps=2)
    return {"weights_bytes": m.weights, "measured_bytes": m.total, "context_bytes": m.overhead,
            "seconds": m.details["seconds"]}


def run_group(args) -> None:
    """One group of cells in this process, writing raw numbers as they come."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw_path = out / f"raw_{args.group}.json"
    record = {"environment": environment(device), "group": args.group, "tiny": args.tiny, "cells": []}
    deadline = time.monotonic() + args.budget_s
    for cell in cells(args.tiny)[args.group]:
        if time.monotonic() > deadline:
            record["cells"].append({**cell, "status": "not run: time budget spent"})
            continue
        entry = dict(cell)
        needs_bnb = cell.get("dtype") in ("nf4", "int8") or cell.get("method") == "qlora"
        if needs_bnb and device != "cuda":
            entry["status"] = "skipped: bitsandbytes is measured on CUDA"
        else:
            start = time.perf_counter()
            try:
                source = model_source(cell["arch"], args.tiny)
                if cell["kind"] == "inference":
                    entry.update(measure_inference_cell(cell, source, device, NEW_TOKENS))
                else:
                    _LOADED.clear()
                    gc.collect()
                    entry.update(measure_training_cell(cell, source, device))
                entry["status"] = "ok"
            except torch.OutOfMemoryError:
                entry["status"] = "out of memory"
                _LOADED.clear()
            except Exception as err:  # keep the other cells' numbers
                entry["status"] = f"failed: {type(err).__name__}: {err}"[:400]
                traceback.print_exc()
            entry["wall_s"] = time.perf_counter() - start
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        record["cells"].append(entry)
        log(f"{args.group}: {describe(entry)}: {entry['status']}"
            + (f", {entry['measured_bytes'] / 2**30:.3f} GiB [{entry['wall_s']:.1f}s]" if entry["status"] == "ok" else ""))
        raw_path.write_text(json.dumps(record, indent=1))
    raw_path.write_text(json.dumps(record, indent=1))


def run(args) -> None:
    """Every group in its own process, sharing the time budget; their cells merged into one raw file."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    groups = list(cells(args.tiny))
    weights = {"bf16": 0.62, "bnb": 0.38}
    merged: dict = {"command": "python " + " ".join(sys.argv), "tiny": args.tiny, "environments": {}, "cells": []}
    for i, group in enumerate(groups):
        left = deadline - time.monotonic()
        share = left if i == len(groups) - 1 else max(30.0, args.budget_s * weights[group])
        cmd = [sys.executable, __file__, "group", group, "--out", str(out), "--budget-s", str(max(share - 20, 10))]
        if args.tiny:
            cmd.append("--tiny")
        log("running:", " ".join(cmd[1:]))
        subprocess.run(cmd, check=False)
        part = out / f"raw_{group}.json"
        if part.exists():
            data = json.loads(part.read_text())
            merged["environments"][group] = data["environment"]
            merged["cells"] += [{**c, "group": group} for c in data["cells"]]
        (out / "vram_heldout_raw.json").write_text(json.dumps(merged, indent=1))
    if args.tiny or args.report:  # on a lent GPU, leave the report (its traces take CPU time) to another machine
        args.raw = str(out / "vram_heldout_raw.json")
        report(args)


# ----------------------------------------------------------------------------- the report (anywhere)


def describe(cell: dict) -> str:
    if cell["kind"] == "inference":
        return f"{cell['arch']} {cell['dtype']} inference N={cell['context']}"
    what = cell["method"] + ("" if cell["method"] != "full" else
                             " (mixed precision)" if cell.get("mixed_precision", True) else " (bf16)")
    return f"{cell['arch']} {what} {cell['seq_len']} tokens{' checkpointed' if cell['checkpointing'] else ''}"


def estimate_for(cell: dict, tiny: bool, device: str):
    import warnings

    from labkit import vram

    source = model_source(cell["arch"], tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # contexts beyond a model's window are measured on purpose
        if cell["kind"] == "inference":
            return vram.estimate_inference(source, cell["dtype"], context=cell["context"], new_tokens=NEW_TOKENS,
                                           device=device)
        return vram.estimate_training(source, cell["method"], cell["dtype"], lora_rank=RANK, seq_len=cell["seq_len"],
                                      gradient_checkpointing=cell["checkpointing"],
                                      mixed_precision=cell.get("mixed_precision", True), device=device)


def compare(raw: dict) -> list[dict]:
    from labkit import vram
    from labkit.errors import LabkitError

    rows = []
    for cell in raw["cells"]:
        if cell.get("status") != "ok":
            continue
        device = raw["environments"].get(cell["group"], {}).get("device", "cuda")
        row = {"cell": describe(cell), "kind": cell["kind"], "dtype": cell["dtype"], "arch": cell["arch"],
               "method": cell.get("method", "inference"), "formula": bool(cell.get("formula")),
               "measured_gib": cell["measured_bytes"] / vram.GIB}
        try:
            est = estimate_for(cell, raw.get("tiny", False), device)
        except LabkitError as err:
            row.update(refused=str(err).split(". ")[0], band_pct=None, estimate_gib=None, error_pct=None)
            rows.append(row)
            continue
        total = est.total - (est.overhead if device == "cpu" else 0.0)  # CPU: tensors only, as measured
        row.update(estimate_gib=total / vram.GIB, error_pct=(total - cell["measured_bytes"]) / cell["measured_bytes"] * 100,
                   band_pct=est.band * 100, within_band=abs(total - cell["measured_bytes"]) <= est.band * cell["measured_bytes"]
                   if est.band else None, how=est.notes[-1][:90] if est.notes else "")
        rows.append(row)
    return rows


def band_needed(rows: list[dict]) -> dict[str, float]:
    """The smallest band each kind of estimate needs on this run (max |error|, %)."""
    out: dict[str, float] = {}
    for r in rows:
        if r.get("error_pct") is None or r["formula"]:
            continue
        kind = ("inference, bitsandbytes (traced)" if r["dtype"] in ("nf4", "int8") else "inference (traced)") \
            if r["kind"] == "inference" else "training (traced)"
        out[kind] = max(out.get(kind, 0.0), abs(r["error_pct"]))
    return {k: round(v, 2) for k, v in out.items()}


def markdown(raw: dict, rows: list[dict], skipped: list[dict]) -> str:
    envs = raw.get("environments", {})
    env = next(iter(envs.values()), {})
    where = env.get("gpu") or "CPU (2-layer copies, tensors counted)"
    lines = ["# labkit.vram on held-out families (no formula, no constant fitted on them)", "",
             f"Measured on {where} (torch {env.get('torch')}, transformers {env.get('transformers')}, peft "
             f"{env.get('peft')}, bitsandbytes {env.get('bitsandbytes')}) with `{raw.get('command', '')}`. Configs: "
             "datasets/heldout_configs/ (real config.json files; Llama 4 Scout's first 4 of 48 layers). Random weights. "
             "Estimate = the current `labkit.vram` (regenerate with `python benchmarks/vram_heldout.py report`); "
             "a refusal is the estimate declining because its band would be wider than 10%.", "",
             f"Band each kind of estimate needs on this run (max |error|, %): {band_needed(rows)}", "",
             "| cell | measured GiB | estimate GiB | error | band | within |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("refused"):
            lines.append(f"| {r['cell']} | {r['measured_gib']:.2f} | refused | | | {r['refused'][:80]} |")
            continue
        band = f"±{r['band_pct']:.0f}%" if r["band_pct"] else ("formula" if r["formula"] else "")
        within = "" if r["within_band"] is None else ("yes" if r["within_band"] else "**no**")
        lines.append(f"| {r['cell']} | {r['measured_gib']:.2f} | {r['estimate_gib']:.2f} | {r['error_pct']:+.1f}% | "
                     f"{band} | {within} |")
    if skipped:
        lines += ["", "Not measured:", ""] + [f"- {describe(c)}: {c.get('status')}" for c in skipped]
    return "\n".join(lines) + "\n"


def report(args) -> None:
    raw = json.loads(Path(args.raw).read_text())
    rows = compare(raw)
    skipped = [c for c in raw["cells"] if c.get("status") != "ok"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "vram_heldout_cpu" if raw.get("tiny") else "vram_heldout"
    (out / f"{stem}.json").write_text(json.dumps(
        {"environments": raw.get("environments"), "command": raw.get("command"), "band_needed_pct": band_needed(rows),
         "rows": rows, "not_measured": [{"cell": describe(c), "status": c.get("status")} for c in skipped]}, indent=1))
    (out / f"{stem}.md").write_text(markdown(raw, rows, skipped))
    if Path(args.raw).resolve() != (out / f"{stem}_raw.json").resolve():
        (out / f"{stem}_raw.json").write_text(json.dumps(raw, indent=1))
    print((out / f"{stem}.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure every group (one process each), then write the report")
    r.add_argument("--out", required=True)
    r.add_argument("--budget-s", type=float, default=290)
    r.add_argument("--tiny", action="store_true", help="2-layer copies on the CPU (no GPU needed)")
    r.add_argument("--report", action="store_true", help="also write the report (always with --tiny)")
    g = sub.add_parser("group", help="one group of cells in this process (run calls it)")
    g.add_argument("group", choices=["bf16", "bnb"])
    g.add_argument("--out", required=True)
    g.add_argument("--budget-s", type=float, default=150)
    g.add_argument("--tiny", action="store_true")
    rp = sub.add_parser("report", help="compare the current estimator with a run's raw numbers")
    rp.add_argument("--raw", required=True)
    rp.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    {"run": run, "group": run_group, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
