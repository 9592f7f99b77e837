"""LoRA and QLoRA: teach a real model a new behaviour by training a few million parameters, or fewer.

Read top to bottom, this module is notebook 07:

1. the task: turn a one-line weather report into JSON with fixed keys (`datasets/lora_task/`), in the chat
   format of the model's template, and its score on the held-out split (valid JSON, exact fields);
2. LoRA from scratch: `LoRALinear` = frozen W plus (alpha / r) * B @ A, B starting at zero;
3. LoRA and QLoRA with peft (`add_lora`, `load_bundled_qlora`);
4. a plain PyTorch training loop with a progress bar, a checkpoint every few steps (an interrupted run resumes and
   loses nothing) and a clear message on out-of-memory;
5. merge, save, reload, adapter size, a merge into a 4-bit base measured by KL divergence, and export of the merged
   model to GGUF (with the chat template and the end-of-turn token, so a server stops after the answer) for
   llama.cpp / Ollama / LM Studio;
6. training memory measured beside `labkit.vram.estimate_training`;
7. the step to your own data: chat-format JSONL files and TRL's SFTTrainer, beside the hand-written loop.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import vram
from .check import exercise, validator
from .errors import LabkitError, MissingPackageError, unknown
from .lora_gpu_check import committed_estimate_check, current_estimate_gib, estimate_accuracy_note  # noqa: F401
from .models import dense_cache_path, load_bundled_transformers
from .paths import cache_dir, datasets_dir
from .runtimes import render_chat
from .vram_measure import TensorMemoryTracker, cuda_context_bytes

# torch, transformers, peft, bitsandbytes and tqdm are imported inside the functions that use them: `import
# labkit` stays quick and works without the optional extras.

class _DropKernelsNotice(logging.Filter):
    """bitsandbytes logs, on import, that an optional CPU kernel package is missing; its fallback works."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


@contextlib.contextmanager
def quiet_libraries():
    """Keep three library messages out of the notebook, narrowly: bitsandbytes' notice about the optional `kernels`
    package (its CPU fallback is what runs), transformers' FutureWarning about `is_gradient_checkpointing` (raised
    inside peft), and transformers' "Loading weights" progress bar (a 270M model loads in a second)."""
    from transformers.utils import logging as hf_logging

    notice = _DropKernelsNotice()
    targets = [logging.getLogger(name) for name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes")]
    for logger in targets:
        logger.addFilter(notice)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated.*",
                                    category=FutureWarning)
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        for logger in targets:
            logger.removeFilter(notice)


# ============================================================================ 1. the task

TASK_KEYS = {"city": str, "sky": str, "temp_c": int}
INSTRUCTION = "Weather to JSON:"
SPLITS = ("train", "heldout")


def load_task(split: str = "train") -> list[dict]:
    """The rows of one split of the weather-to-JSON task: [{"sentence": ..., "answer": ...}, ...]."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    path = datasets_dir() / "lora_task" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return check_rows(rows)


def check_rows(rows: list[dict]) -> list[dict]:
    """Every row must have a non-empty "sentence" and "answer"; raise LabkitError on the first that does not."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise LabkitError("the dataset is empty: pass a list of {\"sentence\": ..., \"answer\": ...} rows.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("sentence", "answer")):
            raise LabkitError(f"row {i} is {row!r}: each row needs the text fields \"sentence\" and \"answer\".")
    return list(rows)


def chat_prompt(sentence: str) -> str:
    """The text the model sees: the user's request in Gemma's chat template, ending where the model speaks."""
    return render_chat([{"role": "user", "content": f"{INSTRUCTION} {sentence}"}], style="gemma")


END_OF_TURN = "<end_of_turn>"

# Gemma's chat template as a Jinja program, the form Hugging Face tokenizers, TRL, llama.cpp's server, Ollama and
# LM Studio read (the bundled base model ships none). It renders exactly `render_chat(style="gemma")` (a test checks).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer Gemma's chat template when it has none (the bundled base model's tokenizer)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


@dataclass
class Example:
    """One tokenized training row: the prompt and the answer; only the answer's tokens are learned."""

    input_ids: list[int]
    labels: list[int]  # -100 on the prompt (not learned), the token id on the answer


def encode_rows(tokenizer: Any, rows: list[dict], max_len: int | None = None, context: int | None = None) -> list[Example]:
    """Tokenize rows as prompt + answer + <end_of_turn>; the loss covers the answer and the end-of-turn token.

    `max_len`: refuse rows longer than this (LabkitError), so no row is silently cut. `context`: the model's
    context length (`config.max_position_embeddings`); max_len may not exceed it.
    """
    rows = check_rows(rows)
    if max_len is not None:
        _require_positive_int("max_len", max_len)
        if context is not None and max_len > context:
            raise LabkitError(f"max_len={max_len} is over the model's context of {context} tokens; "
                              f"use at most {context}.")
    examples = []
    for row in rows:
        prompt = tokenizer(chat_prompt(row["sentence"]), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row["answer"] + END_OF_TURN, add_special_tokens=False)["input_ids"]
        ids = prompt + answer
        if max_len is not None and len(ids) > max_len:
            raise LabkitError(f"a row takes {len(ids)} tokens, over max_len={max_len}: {row['sentence']!r}. "
                              "Raise max_len or shorten the row.")
        examples.append(Example(ids, [-100] * len(prompt) + answer))
    return examples


@dataclass
class TaskScore:
    """The held-out score: share of answers that are valid JSON with exactly the task's keys and types, and share
    that are exactly right."""

    valid: float
    exact: float
    n: int
    samples: list[tuple[str, str]] = field(default_factory=list)  # (sentence, model output), a few
    outputs: list[str] = field(default_factory=list)  # every output, in the rows' order

    def __str__(self) -> str:
        return f"{self.n} held-out rows: {self.valid:.0%} valid JSON in the format, {self.exact:.0%} exactly right"


def parse_answer(text: str) -> dict | None:
    """The model's output as the task's dict, or None when it is not exactly a JSON object with the task's keys."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(value, dict) or set(value) != set(TASK_KEYS):
        return None
    if not all(isinstance(value[k], t) and not isinstance(value[k], bool) for k, t in TASK_KEYS.items()):
        return None
    return value


def score_answers(rows: list[dict], outputs: list[str]) -> TaskScore:
    """Score the model's outputs against the rows' answers."""
    rows = check_rows(rows)
    if len(outputs) != len(rows):
        raise LabkitError(f"{len(outputs)} outputs for {len(rows)} rows: pass one output per row.")
    parsed = [parse_answer(o) for o in outputs]
    valid = sum(p is not None for p in parsed)
    exact = sum(p is not None and p == json.loads(r["answer"]) for p, r in zip(parsed, rows))
    samples = [(r["sentence"], o) for r, o in list(zip(rows, outputs))[:3]]
    return TaskScore(valid / len(rows), exact / len(rows), len(rows), samples, list(outputs))


def generate_answers(model: Any, tokenizer: Any, sentences: list[str], max_new_tokens: int = 28,
                     batch_size: int = 20, progress: bool = True, stop_when_invalid: bool = False) -> list[str]:
    """Greedy answers of a (possibly adapted) model to the task's prompts, in batches, left-padded.

    `stop_when_invalid`: stop a row as soon as its answer cannot become valid (it does not start with "{"), which
    saves most of the time of scoring a model that rambles; the scores are the same."""
    import torch
    from tqdm.auto import tqdm
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopWhenInvalid(StoppingCriteria):
        def __init__(self, prompt_width: int):
            self.prompt_width = prompt_width

        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
            return torch.tensor([bool(t.strip()) and not t.strip().startswith("{") for t in texts],
                                device=input_ids.device)

    device = next(model.parameters()).device
    stop = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    outputs: list[str] = []
    batches = range(0, len(sentences), batch_size)
    for start in tqdm(batches, desc="answering", disable=not progress, leave=False):
        encoded = [tokenizer(chat_prompt(s), add_special_tokens=False)["input_ids"]
                   for s in sentences[start:start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        criteria = StoppingCriteriaList([_StopWhenInvalid(width)]) if stop_when_invalid else None
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=pad, stopping_criteria=criteria)
        outputs += [tokenizer.decode(o[width:], skip_special_tokens=True).strip() for o in out]
    return outputs


def evaluate(model: Any, tokenizer: Any, rows: list[dict] | None = None, max_new_tokens: int = 28) -> TaskScore:
    """Score a model on the held-out split (or on `rows`). A right answer takes about 22 tokens; 28 leaves room
    for a wrong one to show itself. A row stops as soon as it cannot be valid any more (it does not start with
    "{"), so `TaskScore.outputs` of a rambling model hold only its first words."""
    rows = load_task("heldout") if rows is None else check_rows(rows)
    was_training = model.training
    model.eval()
    outputs = generate_answers(model, tokenizer, [r["sentence"] for r in rows], max_new_tokens=max_new_tokens,
                               stop_when_invalid=True)
    model.train(was_training)
    return score_answers(rows, outputs)


# ============================================================================ 2. LoRA from scratch


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabkitError(f"{name} must be a whole number of 1 or more, got {value!r}")


def _lora_linear_class():
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        """y = W x + (alpha / r) * B (A x), with W frozen, A (r x in) random, B (out x r) zero.

        B = 0 means the layer starts as exactly the base layer: training begins from the pretrained model.
        Only A and B learn: r * (in + out) parameters instead of in * out.
        """

        def __init__(self, base: nn.Linear, rank: int, alpha: float):
            super().__init__()
            _require_positive_int("rank", rank)
            self.base = base
            for p in base.parameters():
                p.requires_grad_(False)
            self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
            weight = base.weight
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=weight.device))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=weight.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what peft does too

        def forward(self, x):
            update = (x.to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T) * self.scaling
            return self.base(x) + update.to(x.dtype)

        def merged_weight(self):
            """W + (alpha / r) * B @ A: the single matrix that replaces both after training."""
            return self.base.weight + (self.lora_B @ self.lora_A * self.scaling).to(self.base.weight.dtype)

    return LoRALinear


def __getattr__(name: str):  # `lora.LoRALinear` without importing torch when the module loads
    if name == "LoRALinear":
        cls = _lora_linear_class()
        globals()["LoRALinear"] = cls
        return cls
    raise AttributeError(name)


def linear_module_names(model: Any) -> list[str]:
    """The short names of the model's nn.Linear layers (q_proj, v_proj, ...), the output head excluded."""
    from torch import nn

    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, nn.Linear) or type(m).__name__ in ("Linear4bit", "Linear8bitLt")}
    return sorted(names - {"lm_head"})


def resolve_targets(model: Any, target_modules: str | list[str] | tuple[str, ...]) -> list[str]:
    """The module names LoRA will adapt: a list of short names the model has, or "all-linear"."""
    available = linear_module_names(model)
    if target_modules == "all-linear":
        return available
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise LabkitError(f"no target modules given. Accepted: 'all-linear' or names from {available}")
    for t in targets:
        if t not in available:
            raise unknown("LoRA target module", t, [*available, "all-linear"])
    return targets


def inject_lora(model: Any, rank: int = 8, alpha: float = 16, target_modules: Any = ("q_proj", "v_proj"),
                seed: int = 0) -> list[str]:
    """Freeze every weight of `model`, then wrap each chosen nn.Linear in a LoRALinear. Returns the wrapped names."""
    import torch

    _require_positive_int("rank", rank)
    targets = set(resolve_targets(model, target_modules))
    LoRALinear = __getattr__("LoRALinear")  # noqa: N806
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the parameters they stand for."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if type(p).__name__ == "Params4bit" else 1)  # two 4-bit weights per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def lora_parameter_count(shapes: list[tuple[int, int]], rank: int) -> int:
    """r * (in + out) per adapted matrix of shape (out, in)."""
    _require_positive_int("rank", rank)
    return sum(rank * (out_f + in_f) for out_f, in_f in shapes)


def copy_peft_adapter(peft_state: dict, model: Any) -> int:
    """Load peft's lora_A / lora_B tensors into a model wrapped by `inject_lora`. Returns how many were copied."""
    import torch

    ours = dict(model.named_parameters())
    copied = 0
    for key, value in peft_state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.replace("base_model.model.", "", 1).replace(".default.weight", "").replace(".weight", "")
        if name not in ours:
            raise LabkitError(f"the adapter tensor {key} has no place in this model (looked for {name}); "
                              "inject_lora with the same target modules first.")
        with torch.no_grad():
            ours[name].copy_(value)
        copied += 1
    return copied


# ============================================================================ 3. peft: LoRA and QLoRA


def _require_peft():
    try:
        with quiet_libraries():  # importing peft imports bitsandbytes, which logs a notice (see quiet_libraries)
            import peft
    except ImportError as err:
        raise MissingPackageError("peft", "LoRA training", extra="lab") from err
    return peft


def add_lora(model: Any, rank: int = 8, alpha: float = 16, target_modules: Any = ("q_proj", "v_proj"),
             dropout: float = 0.0, seed: int = 0):
    """Wrap `model` with peft's LoRA (LoraConfig + get_peft_model); every other weight is frozen."""
    peft = _require_peft()
    import torch

    _require_positive_int("rank", rank)
    targets = resolve_targets(model, target_modules)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                             target_modules="all-linear" if target_modules == "all-linear" else targets)
    torch.manual_seed(seed)
    with quiet_libraries():
        return peft.get_peft_model(model, config)


def load_adapter(model: Any, path: str | Path):
    """A saved peft adapter (`save_pretrained`) on top of `model`: `PeftModel.from_pretrained`, quietly."""
    peft = _require_peft()
    with quiet_libraries():
        return peft.PeftModel.from_pretrained(model, str(path))


def load_bundled_qlora(device: str = "cpu", gradient_checkpointing: bool = False):
    """The bundled Gemma 3 270M with its linear layers in bitsandbytes NF4 (double quantization), prepared for
    k-bit training (`prepare_model_for_kbit_training`), on any device bitsandbytes supports, CPU included."""
    peft = _require_peft()
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with quiet_libraries():
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise MissingPackageError("bitsandbytes", "QLoRA (a 4-bit base)", extra="lab") from err
        if not (dense_cache_path() / "model.safetensors").exists():
            load_bundled_transformers()  # de-quantizes the GGUF once and caches the dense copy
        compute = torch.bfloat16 if device == "cuda" else torch.float32
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute)
        model = AutoModelForCausalLM.from_pretrained(str(dense_cache_path()), quantization_config=config,
                                                     device_map={"": device}, dtype=compute)
        return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


# ============================================================================ 4. training


@dataclass
class TrainResult:
    losses: list[float]
    steps: int
    seconds: float
    resumed_from: int
    output_dir: Path | None
    tokens: int = 0  # tokens processed by this call (prompt and answer)

    def __str__(self) -> str:
        resumed = f", resumed from step {self.resumed_from}" if self.resumed_from else ""
        rate = f", {self.tokens / self.seconds:,.0f} tokens/s" if self.seconds > 0 and self.tokens else ""
        return (f"{self.steps} steps, loss {self.losses[0]:.3f} -> {self.losses[-1]:.3f}, "
                f"{self.seconds:.1f} s in this run{rate}{resumed}")


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The rows of step `step`: epoch after epoch, each a fresh shuffle fixed by the seed, so a resumed run
    sees exactly the batches an uninterrupted one would."""
    out = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[offset])
    return out


def collate(examples: list[Example], pad_id: int = 0):
    """Right-pad a batch: input_ids, attention_mask and labels (-100 where nothing is learned)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in examples])
    return ids, mask, labels


def answer_loss(model: Any, ids, mask, labels):
    """Mean cross-entropy over the answer tokens. Logits are computed only where an answer token is predicted
    (`logits_to_keep`): a 262k-word vocabulary makes the full logits the biggest tensor of the step."""
    import torch.nn.functional as F

    predicts = (labels[:, 1:] != -100).any(dim=0).nonzero().flatten()  # positions whose next token is learned
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=predicts).logits
    targets = labels[:, predicts + 1]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def learning_rate(step: int, steps: int, peak: float, warmup: int = 3) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to a tenth of the peak at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (1 - 0.9 * (step - warmup) / max(1, steps - warmup))


CHECKPOINT = "checkpoint.pt"
INITIAL = "initial_adapter.pt"


def _trainable_state(model: Any) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_atomically(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(model: Any, examples: list[Example], steps: int, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
          output_dir: str | Path | None = None, checkpoint_every: int = 10, pad_id: int = 0,
          on_step: Any = None, progress: bool = True, until: int | None = None) -> TrainResult:
    """Train the model's trainable parameters (the adapters) on `examples` with AdamW.

    With `output_dir`, a checkpoint (adapter weights, optimizer state, losses) is written every `checkpoint_every`
    steps, at the end, and when the run is interrupted or runs out of memory; calling `train` again with the same
    `output_dir` resumes where it stopped (a finished run returns at once). `on_step(step, loss)` is called after
    every step (live plots). `until`: stop after that step in this call (the learning-rate schedule still spans
    `steps`), e.g. to train in chunks or to compare the first steps of two runs.
    """
    import torch
    from tqdm.auto import tqdm

    _require_positive_int("steps", steps)
    _require_positive_int("batch_size", batch_size)
    _require_positive_int("checkpoint_every", checkpoint_every)
    if not examples:
        raise LabkitError("the dataset is empty: pass the examples encode_rows made from your rows.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LabkitError("the model has no trainable parameters: add adapters first (add_lora or inject_lora).")
    device = params[0].device
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    setup = {"batch_size": batch_size, "lr": lr, "seed": seed, "examples": len(examples),
             "trainable": sorted(_trainable_state(model))}
    losses: list[float] = []
    start_step = 0
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / CHECKPOINT).exists():
            start_step, losses = _resume(model, optimizer, out / CHECKPOINT, setup)
        elif not (out / INITIAL).exists():
            _save_atomically(_trainable_state(model), out / INITIAL)

    def save(step_done: int) -> None:
        if out is not None:
            _save_atomically({"step": step_done, "losses": losses, "setup": setup, "adapter": _trainable_state(model),
                              "optimizer": optimizer.state_dict()}, out / CHECKPOINT)

    end = steps if until is None else min(steps, until)
    model.train()
    tokens, began = 0, time.perf_counter()
    bar = tqdm(range(start_step, end), initial=start_step, total=end, desc="training", disable=not progress)
    step = start_step
    try:
        for step in bar:
            rows = [examples[i] for i in batch_indices(step, batch_size, len(examples), seed)]
            ids, mask, labels = (t.to(device) for t in collate(rows, pad_id))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            loss = answer_loss(model, ids, mask, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            tokens += int(mask.sum())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if (step + 1) % checkpoint_every == 0 or step + 1 == end:
                save(step + 1)
            if on_step is not None:
                on_step(step, losses[-1])
    except KeyboardInterrupt:
        save(len(losses))
        bar.close()
        where = f"; the checkpoint in {out} keeps steps 1-{len(losses)}: run again to resume" if out else ""
        print(f"Interrupted at step {len(losses)} of {steps}{where}.")
        raise
    except RuntimeError as err:
        if not _is_out_of_memory(err):
            raise
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        save(len(losses))
        raise _out_of_memory_error(step, rows, device, out) from None
    bar.close()
    model.eval()
    return TrainResult(losses, len(losses), time.perf_counter() - began, start_step, out, tokens)


def _resume(model: Any, optimizer: Any, path: Path, setup: dict) -> tuple[int, list[float]]:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["setup"] != setup:
        changed = [k for k in setup if state["setup"].get(k) != setup[k]]
        raise LabkitError(f"the checkpoint in {path.parent} was made with different settings ({', '.join(changed)}). "
                          "Use another output_dir for a new run, or delete that folder to start over.")
    current = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            current[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    print(f"Resuming from the checkpoint in {path.parent} at step {state['step']}.")
    return state["step"], list(state["losses"])


def _is_out_of_memory(err: BaseException) -> bool:
    import torch

    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _out_of_memory_error(step: int, rows: list[Example], device: Any, out: Path | None) -> LabkitError:
    import torch

    gc.collect()
    freed = ""
    if getattr(device, "type", str(device)) == "cuda":
        before = torch.cuda.memory_reserved()
        torch.cuda.empty_cache()
        freed = f" ({(before - torch.cuda.memory_reserved()) / 2**30:.2f} GiB of cached GPU memory returned)"
    batch, width = len(rows), max(len(r.input_ids) for r in rows)
    kept = f"Steps before it are saved in {out}: the next call resumes there. " if out else ""
    return LabkitError(
        f"out of memory at step {step + 1} on {device}, training a batch of {batch} x {width} tokens. "
        f"The failed step's activations and gradients were freed{freed}. {kept}"
        f"Try batch_size={max(1, batch // 2)}, shorter rows (max_len={max(8, width // 2)}), "
        "gradient checkpointing (model.gradient_checkpointing_enable()), or QLoRA (a 4-bit base).")


# ---------------------------------------------------------------------------- the course's trained adapter

BUNDLED_SETUP = dict(rank=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                     batch_size=4, lr=2e-3, seed=0)


def course_run_dir(steps: int, **setup: Any) -> Path:
    """Where the course keeps the adapter trained with these settings (labkit's cache; LABKIT_CACHE moves it).

    Notebook 07, its student version and tests/test_lora.py all train into this folder, so whichever runs first
    trains and the others resume from its finished checkpoint. Delete the folder to train again from scratch."""
    chosen = {**BUNDLED_SETUP, **setup, "steps": steps}
    key = "-".join(f"{k}={'+'.join(v) if isinstance(v, tuple) else v}" for k, v in sorted(chosen.items()))
    import hashlib

    return cache_dir() / "lora" / f"gemma-3-270m-weather-json-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def train_bundled_adapter(steps: int, device: str = "cpu", output_dir: str | Path | None = None,
                          on_step: Any = None, **setup: Any):
    """Load the bundled model, add peft LoRA (BUNDLED_SETUP, overridable) and train it on the task.

    Returns (peft_model, tokenizer, TrainResult). Resumes from `output_dir` (default: `course_run_dir`)."""
    chosen = {**BUNDLED_SETUP, **setup}
    with quiet_libraries():
        loaded = load_bundled_transformers(dtype="fp32" if device == "cpu" else "bf16", device=device)
    peft_model = add_lora(loaded.model, chosen["rank"], chosen["alpha"], chosen["target_modules"], seed=chosen["seed"])
    examples = encode_rows(loaded.tokenizer, load_task("train"), max_len=128,
                           context=loaded.model.config.max_position_embeddings)
    out = output_dir or course_run_dir(steps, **setup)
    result = train(peft_model, examples, steps, chosen["batch_size"], chosen["lr"], chosen["seed"], out,
                   pad_id=loaded.tokenizer.pad_token_id or 0, on_step=on_step)
    return peft_model, loaded.tokenizer, result


# ============================================================================ 5. merge, save, export


def merge_and_compare(peft_model: Any, input_ids: Any) -> tuple[Any, float]:
    """merge_and_unload the adapters into the base weights; return the merged model and the largest absolute
    difference between its logits and the adapted model's on `input_ids` (float rounding only)."""
    import torch

    peft_model.eval()
    with torch.no_grad():
        before = peft_model(input_ids=input_ids).logits.float()
        merged = peft_model.merge_and_unload()
        after = merged(input_ids=input_ids).logits.float()
    return merged, float((before - after).abs().max())


def answer_logprobs(model: Any, tokenizer: Any, rows: list[dict]) -> list:
    """The model's next-token log-probabilities at every position that predicts an answer token of `rows`
    (prompt + answer fed in, teacher-forced): one (answer tokens x vocabulary) tensor per row."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    out = []
    for example in encode_rows(tokenizer, rows):
        predicts = [i for i in range(len(example.labels) - 1) if example.labels[i + 1] != -100]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids], device=device)).logits[0, predicts]
        out.append(F.log_softmax(logits.float().cpu(), dim=-1))
    return out


def mean_kld(reference: list, other: list) -> float:
    """Mean KL(reference || other) in nats per token over matching lists of log-probability tensors: 0 means the
    same predictions; the same quantity as notebook 04's KLD."""
    total = sum(float((r.exp() * (r - o)).sum()) for r, o in zip(reference, other))
    return total / sum(len(r) for r in reference)


@dataclass
class FourBitMerge:
    """The trained adapter on an NF4 base, kept apart or merged into the 4-bit weights, compared by KL divergence
    over the answer tokens of held-out rows (nats per token; 0 = the same predictions)."""

    base_to_4bit: float  # adapter on the NF4 base vs the adapter on the full-precision base
    merge_in_4bit: float  # merged into the NF4 weights vs the adapter kept apart on the same NF4 base
    merged_vs_full: float  # merged into NF4 vs the adapter on the full-precision base
    rows: int

    def __str__(self) -> str:
        return (f"KL divergence over the answers of {self.rows} held-out rows (nats per token):\n"
                f"  adapter on the NF4 base vs on the full-precision base   {self.base_to_4bit:.4f}\n"
                f"  merged INTO the NF4 weights vs the adapter kept apart   {self.merge_in_4bit:.4f}\n"
                f"  merged into NF4 vs the adapter on full precision        {self.merged_vs_full:.4f}")


def unpack_cpu_4bit_weights(model: Any) -> int:
    """Undo bitsandbytes' CPU repacking of NF4 weights; returns how many matrices were unpacked.

    On a CPU with bf16 instructions, a 4-bit layer's first inference (eval mode, no gradients) rearranges its packed
    weights for a faster kernel, in place. peft's merge then de-quantizes those bytes as if they were plain NF4 and
    writes back nonsense (a KL divergence of tens of nats per token). Unpacking first, as bitsandbytes itself does
    before saving, makes the merge read the real weights."""
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # no bitsandbytes, or a version without CPU repacking: nothing to undo
        return 0
    unpacked = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, bnb.nn.Linear4bit) and getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
            unpacked += 1
    return unpacked


def merge_into_4bit(adapter_dir: str | Path, reference: Any, tokenizer: Any, rows: list[dict],
                    device: str = "cpu", base: Any = None) -> FourBitMerge:
    """Put the saved adapter on the bundled model in NF4 (`base`, e.g. a QLoRA model after `unload()`, or loaded
    here); then merge the adapter INTO the 4-bit weights (peft de-quantizes each matrix, adds the update and
    quantizes the sum again) and compare the three by KL divergence. `reference` is the adapter on the
    full-precision base (what it was trained on). The NF4 base is merged in place: do not reuse it."""
    full = answer_logprobs(reference, tokenizer, rows)
    adapted = load_adapter(base if base is not None else load_bundled_qlora(device=device), adapter_dir)
    adapted.eval()
    apart = answer_logprobs(adapted, tokenizer, rows)
    unpack_cpu_4bit_weights(adapted)
    with quiet_libraries(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Mm]erg.*")  # peft's notice of rounding errors in a 4-bit
        merged = adapted.merge_and_unload()                      # merge: measuring them is the point here
    into = answer_logprobs(merged, tokenizer, rows)
    return FourBitMerge(mean_kld(full, apart), mean_kld(apart, into), mean_kld(full, into), len(rows))


def folder_bytes(path: str | Path) -> int:
    """Bytes on disk of a file or of every file under a folder (an adapter, a merged model)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ============================================================================ 6. memory: estimate beside measurement


@dataclass
class TrainingMemory:
    measured: float  # bytes: weights + every tensor alive at the step's peak (CPU) / allocator peak + context (CUDA)
    estimate: float  # vram.estimate_training(...).total, minus the fixed runtime overhead on CPU
    tokens_per_s: float
    details: dict = field(default_factory=dict)

    @property
    def error(self) -> float:
        return self.estimate / self.measured - 1

    def table(self) -> str:
        """The estimate's parts that are compared with the measurement (on a CPU: the tensors, no overhead), which
        add up to the estimate printed, beside the measured total."""
        est = self.details["estimate"]
        parts = {"weights": est.weights, "gradients": est.gradients, "optimizer states": est.optimizer_states,
                 "activations": est.activations}
        if self.details.get("device") == "cuda":
            parts["runtime overhead"] = est.overhead
        lines = [f"{'GiB':<18} {'estimate':>9}"] + [f"{k:<18} {v / 2**30:>9.3f}" for k, v in parts.items()]
        lines += [f"{'sum (estimate)':<18} {sum(parts.values()) / 2**30:>9.3f}",
                  f"{'measured':<18} {self.measured / 2**30:>9.3f}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        rate = f", {self.tokens_per_s:,.0f} tokens/s" if math.isfinite(self.tokens_per_s) else ""
        return f"measured {self.measured / 2**30:.2f} GiB, estimated {self.estimate / 2**30:.2f} GiB ({self.error:+.1%}){rate}"


def measure_training_step(model: Any, seq_len: int, batch: int = 1, steps: int = 2, vocab_size: int | None = None,
                          seed: int = 0) -> tuple[float, float]:
    """Run `steps` full training steps (forward on every position, backward, AdamW) on random tokens and return
    (peak bytes, tokens/s of the steps after the first). On CUDA the peak is torch's allocator peak (weights
    included); on CPU it is the weights plus the peak of tensors created during the steps, and tokens/s is NaN
    (the tensor tracker slows every operation)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LabkitError("the model has no trainable parameters: add adapters first.")
    device = params[0].device
    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []

    def run() -> None:
        for _ in range(steps):
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        run()
        peak = float(torch.cuda.max_memory_allocated())
    else:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        weights += sum(b.numel() * b.element_size() for b in model.buffers())
        with TensorMemoryTracker() as tracker:
            run()
        peak = float(weights + tracker.peak)
    if device.type != "cuda":  # the tracker watches every operation: its steps are no measure of speed
        return peak, float("nan")
    later = times[1:] or times
    return peak, batch * seq_len * len(later) / sum(later)


def training_memory(model: Any, method: str, seq_len: int, batch: int = 1, rank: int = 8,
                    target_modules: Any = "all-linear", dtype: str = "fp32", gradient_checkpointing: bool = False,
                    steps: int = 2) -> TrainingMemory:
    """Measure training steps of `model` (adapters already added; method "lora" or "qlora") and put
    `vram.estimate_training` for the same architecture and setup beside it."""
    peak, rate = measure_training_step(model, seq_len, batch, steps)
    device = next(model.parameters()).device.type
    config = getattr(model, "get_base_model", lambda: model)().config
    est = vram.estimate_training(config, method, dtype=dtype, lora_rank=rank, target_modules=target_modules,
                                 seq_len=seq_len, batch=batch, gradient_checkpointing=gradient_checkpointing,
                                 device="cuda" if device == "cuda" else "cpu")
    if device == "cuda":
        measured = peak + cuda_context_bytes()
        estimate = est.total
    else:  # the CPU figure counts tensors only: compare with the estimate's tensors, without any overhead
        measured, estimate = peak, est.total - est.overhead
    return TrainingMemory(measured, estimate, rate, {"estimate": est, "device": device})


# ============================================================================ the widget's function


def lora_plan(model: str = "llama-3.1-8b", rank: int = 16, target_modules: Any = "all-linear", seq_len: int = 2048,
              batch: int = 1, gradient_checkpointing: bool = False) -> list[dict]:
    """Trainable parameters and training memory of full fine-tuning, LoRA and QLoRA for one setup (one row each)."""
    rows = []
    for method in ("full", "lora", "qlora"):
        est = vram.estimate_training(model, method, lora_rank=rank, target_modules=target_modules, seq_len=seq_len,
                                     batch=batch, gradient_checkpointing=gradient_checkpointing)
        rows.append({"method": method, "trainable": est.inputs["trainable_parameters"],
                     "total_gib": est.total / 2**30, "weights_gib": est.weights / 2**30,
                     "activations_gib": est.activations / 2**30,
                     "optimizer_and_grads_gib": (est.optimizer_states + est.gradients) / 2**30})
    return rows


def plan_text(rows: list[dict]) -> str:
    lines = [f"{'method':<7} {'trainable':>15} {'memory GiB':>11} {'weights':>8} {'activ.':>7} {'optim+grad':>10}"]
    for r in rows:
        lines.append(f"{r['method']:<7} {r['trainable']:>15,} {r['total_gib']:>11.1f} {r['weights_gib']:>8.1f} "
                     f"{r['activations_gib']:>7.1f} {r['optimizer_and_grads_gib']:>10.1f}")
    return "\n".join(lines)


# ============================================================================ exercises


@exercise("07.lora_params",
          hint="Read the shapes of A and B in section 2: each is thin, with r on one side. Count the entries of "
               "both, for each matrix you listed, and add them up.",
          slips={"counting only A (r x in) or only B (out x r), not both":
                 lambda expected, shapes, rank: sum(rank * i for _, i in shapes),
                 "counting only B (out x r), not A": lambda expected, shapes, rank: sum(o * rank for o, _ in shapes),
                 "counting the full matrices (in x out: what full fine-tuning trains)":
                 lambda expected, shapes, rank: sum(o * i for o, i in shapes),
                 "forgetting to multiply by the rank r": lambda expected, shapes, rank: sum(o + i for o, i in shapes)})
def _expected_lora_params(shapes: list[tuple[int, int]], rank: int) -> int:
    return lora_parameter_count(shapes, rank)


@exercise("07.scaling",
          hint="peft builds the scale from lora_alpha and r so that raising the rank alone does not make the update "
               "bigger (section 2). Which of the two goes on top?",
          slips={"dividing the other way round (r / alpha)": lambda expected, rank, alpha: rank / alpha,
                 "using alpha alone, without the rank": lambda expected, rank, alpha: alpha})
def _expected_scaling(rank: int, alpha: float) -> float:
    return alpha / rank


def _merged_weight_slips(layer: Any) -> dict:
    """The matrices a learner gets by each common slip on the merge (the names are shown when one matches)."""
    w, a, b, s = (layer.base.weight.detach().float(), layer.lora_A.detach().float(), layer.lora_B.detach().float(),
                  layer.scaling)
    return {"leaving out the scale alpha / r (W + B @ A)": w + b @ a,
            "returning only the update, without W": s * b @ a,
            "scaling W too ((W + B @ A) * scale)": (w + b @ a) * s}


@validator("07.merged_weight",
           hint="The merged matrix must give the same output as the wrapped layer for every input x: write down what "
                "LoRALinear.forward computes and factor x out.")
def _validate_merged_weight(answer: Any, layer: Any = None) -> str | None:
    import torch

    if not isinstance(answer, torch.Tensor):
        return f"expected a torch tensor, got {type(answer).__name__}"
    expected = layer.merged_weight().detach()
    if answer.shape != expected.shape:
        hint = (" (A @ B is r x r or fails: the update is B @ A, out x in)" if tuple(answer.shape) ==
                tuple(layer.lora_A.shape[:1] * 2) else "")
        return f"shape {tuple(answer.shape)}, expected {tuple(expected.shape)} (out x in, like W){hint}"
    got = answer.detach().float()
    if torch.allclose(got, expected.float(), atol=1e-5, rtol=1e-4):
        return None
    for slip, value in _merged_weight_slips(layer).items():
        if torch.allclose(got, value, atol=1e-5, rtol=1e-4):
            return f"the values differ from the merged layer's. That is the matrix you get by {slip}"
    return "the values differ from the merged layer's (check each term and its scale)"


@exercise("07.valid_rate",
          hint="parse_answer tells you, output by output, whether it is valid. The rate is a share of all the "
               "outputs: a number between 0 and 1.",
          slips={"giving the number of valid outputs instead of their share":
                 lambda expected, outputs: expected * len(outputs),
                 "giving a percentage where a share between 0 and 1 is asked": 100.0,
                 "counting the invalid outputs instead of the valid ones": lambda expected, outputs: 1 - expected})
def _expected_valid_rate(outputs: list[str]) -> float:
    if not outputs:
        raise LabkitError("outputs is empty: pass the model's outputs to check the rate against.")
    return sum(parse_answer(o) is not None for o in outputs) / len(outputs)
