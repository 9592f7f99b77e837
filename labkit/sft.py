"""Training on your own data, the way most public tutorials do it: conversations in the common chat format
(JSON Lines, one {"messages": [...]} per line), Gemma's chat template, and TRL's SFTTrainer with the same LoRA
setup as notebook 07's hand-written loop (`labkit.lora.train`).

TRL does what `labkit.lora` spells out by hand: it renders each conversation with the tokenizer's chat template,
masks the prompt so the loss covers the answer only (prompt-completion data), batches, schedules the learning rate
and runs the optimizer. Notebook 07 shows both on the same rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import LabkitError, MissingPackageError
from .lora import (
    BUNDLED_SETUP,
    INSTRUCTION,
    TrainResult,
    _require_positive_int,
    check_rows,
    ensure_chat_template,
    quiet_libraries,
)

# trl, datasets, peft and transformers are imported inside the functions that use them: `import labkit` stays quick
# and works without the optional extras.

CHAT_ROLES = ("system", "user", "assistant")


def to_chat_rows(rows: list[dict]) -> list[dict]:
    """Task rows as conversations in the common chat format: {"messages": [{"role": "user", ...},
    {"role": "assistant", ...}]}, the form TRL, most tutorials and most fine-tuning services read."""
    return [{"messages": [{"role": "user", "content": f"{INSTRUCTION} {r['sentence']}"},
                          {"role": "assistant", "content": r["answer"]}]} for r in check_rows(rows)]


def save_chat_jsonl(chat_rows: list[dict], path: str | Path) -> Path:
    """Write conversations as JSON Lines, one {"messages": [...]} per line (checked first)."""
    path = Path(path)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in check_chat_rows(chat_rows)),
                    encoding="utf-8")
    return path


def check_chat_rows(chat_rows: list[dict], where: str = "row") -> list[dict]:
    """Every conversation must be {"messages": [...]} with roles from CHAT_ROLES, non-empty text, at least one user
    turn, and an assistant turn last (the answer to learn); raise LabkitError naming the first that is not."""
    if not isinstance(chat_rows, (list, tuple)) or not chat_rows:
        raise LabkitError('no conversations: give a list of {"messages": [{"role": "user", "content": ...}, '
                          '{"role": "assistant", "content": ...}]}.')
    for i, row in enumerate(chat_rows, start=1):
        messages = row.get("messages") if isinstance(row, dict) else None
        problem = None
        if not isinstance(messages, list) or not messages:
            problem = 'it needs a non-empty "messages" list'
        elif not all(isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
                     and m["content"].strip() for m in messages):
            problem = f"every message needs a role from {CHAT_ROLES} and non-empty text content"
        elif messages[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in messages):
            problem = "it needs a user turn and must end with the assistant's answer (the part that is learned)"
        if problem:
            raise LabkitError(f"{where} {i}: {problem}; got {json.dumps(row)[:120]}")
    return list(chat_rows)


def load_chat_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON Lines file of conversations ({"messages": [...]} per line), checked line by line."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise LabkitError(f"{path.name}, line {n}: not JSON ({err.msg}); each line must be one "
                              '{"messages": [...]} object') from None
    return check_chat_rows(rows, where=f"{path.name}, conversation")


def prompt_completion(chat_rows: list[dict]) -> list[dict]:
    """Conversations in TRL's prompt-completion form: everything before the last answer is the prompt (context,
    not learned), the last assistant turn is the completion, the only part the loss covers."""
    return [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in check_chat_rows(chat_rows)]


def train_with_trl(model: Any, tokenizer: Any, chat_rows: list[dict], steps: int, batch_size: int = 4,
                   lr: float = 2e-3, seed: int = 0, max_length: int = 128, output_dir: str | Path | None = None,
                   **setup: Any):
    """Fine-tune with TRL's SFTTrainer, the route most public tutorials take: the same LoRA (BUNDLED_SETUP,
    overridable), the same learning-rate shape (3 warm-up steps, then linear decay) and the loss on the answers
    only (prompt-completion data), but TRL tokenizes with the chat template, batches, and runs the loop.

    Returns (peft model, TrainResult). Gradient checkpointing stays off (TRL turns it on by default; on a CPU with a
    small model it only costs time)."""
    import tempfile

    try:
        import trl
        from datasets.utils import logging as ds_logging

        from datasets import Dataset
    except ImportError as err:
        raise MissingPackageError("trl", "training with TRL's SFTTrainer", extra="lab") from err
    import peft
    from transformers import PrinterCallback, ProgressCallback

    _require_positive_int("steps", steps)
    _require_positive_int("batch_size", batch_size)
    chosen = {**BUNDLED_SETUP, **setup}
    ensure_chat_template(tokenizer)
    config = peft.LoraConfig(r=chosen["rank"], lora_alpha=chosen["alpha"], lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM", target_modules=list(chosen["target_modules"]))
    device = next(model.parameters()).device
    with quiet_libraries():  # transformers warns that the name gradient_checkpointing is deprecated
        args = trl.SFTConfig(
            output_dir=str(output_dir or tempfile.mkdtemp(prefix="labkit-trl-")), max_steps=steps,
            per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="linear", warmup_steps=3,
            weight_decay=0.0, logging_steps=1, save_strategy="no", report_to="none", seed=seed, max_length=max_length,
            completion_only_loss=True, gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
            use_cpu=device.type == "cpu", bf16=False, fp16=False)
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # "Tokenizing train dataset" and three more bars for a 240-row file
    try:
        with quiet_libraries():
            trainer = trl.SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=config,
                                     train_dataset=Dataset.from_list(prompt_completion(chat_rows)))
            for callback in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(callback)  # the loop's own prints; the losses come back in the result
            began = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - began
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    losses = [float(h["loss"]) for h in logs]
    tokens = int(logs[-1].get("num_tokens", 0)) if logs else 0
    trainer.model.eval()
    return trainer.model, TrainResult(losses, len(losses), seconds, 0, None, tokens)
