"""labkit.vram.estimate_training against every tensor counted on the CPU, for every family with a formula.

    python benchmarks/vram_training_cpu.py --out /tmp/training_cpu               # all families, 6 setups (~15 min)
    python benchmarks/vram_training_cpu.py --families llama,qwen3 --setups lora:bf16:0

Tiny configs (tests/conftest.py TINY_CONFIGS) with a vocabulary 32x the width, as real models have; two training steps
(`vram_measure.measure_training` on the CPU: forward with the loss on every position, backward, AdamW); the estimate's
bytes beyond the weights against the tracker's peak beyond the weights. Setups are method:dtype:checkpointing,
dtype "amp" meaning full fine-tuning in mixed precision (an fp32 model under torch.autocast(bf16)).
Writes vram_training_cpu.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SETUPS = ["lora:bf16:0", "lora:bf16:1", "full:bf16:0", "full:bf16:1", "full:amp:0", "full:amp:1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--families", default="all")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import transformers
    from conftest import TINY_CONFIGS as TINY

    from labkit import vram, vram_measure

    transformers.logging.set_verbosity_error()
    families = sorted(TINY) if args.families == "all" else args.families.split(",")
    rows = []
    for family in families:
        cfg = dict(TINY[family], vocab_size=args.vocab)
        for setup in args.setups.split(","):
            method, dtype, ckpt = setup.split(":")
            amp = dtype == "amp"
            kwargs = dict(lora_rank=8, gradient_checkpointing=ckpt == "1", mixed_precision=amp, device="cpu")
            start = time.perf_counter()
            measured = vram_measure.measure_training(cfg, method, "bf16" if amp else dtype, seq_len=args.seq_len, **kwargs)
            est = vram.estimate_training(cfg, method, "bf16" if amp else dtype, seq_len=args.seq_len, **kwargs)
            beyond = est.total - est.weights - est.overhead
            row = {"family": family, "method": method, "dtype": dtype, "checkpointing": ckpt == "1",
                   "measured_mib": measured.activations / 2**20, "estimate_mib": beyond / 2**20,
                   "error_pct": (beyond / measured.activations - 1) * 100, "peak": est.notes[-1],
                   "weights_exact": abs(est.weights - measured.weights) < 1e-3 * measured.weights}
            rows.append(row)
            print(f"{family:12s} {method:5s} {dtype:5s} ckpt={ckpt}: measured {row['measured_mib']:7.3f} MiB, "
                  f"estimate {row['estimate_mib']:7.3f} ({row['error_pct']:+.1f}%) [{time.perf_counter() - start:.0f}s]",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vram_training_cpu.json").write_text(json.dumps(rows, indent=1))
    lines = ["| family | method | dtype | checkpointing | measured MiB | estimate MiB | error |", "|---|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['family']} | {r['method']} | {r['dtype']} | {'yes' if r['checkpointing'] else 'no'} | "
              f"{r['measured_mib']:.3f} | {r['estimate_mib']:.3f} | {r['error_pct']:+.1f}% |" for r in rows]
    (out / "vram_training_cpu.md").write_text("\n".join(lines) + "\n")
    print(f"worst: {max(abs(r['error_pct']) for r in rows):.1f}% over {len(rows)} cells")


if __name__ == "__main__":
    main()
