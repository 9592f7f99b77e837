"""labkit.sft: chat-format files (checked line by line), TRL's prompt-completion form, and TRL's SFTTrainer on a
toy Gemma with the real tokenizer: the same tokens as the hand-written loop, and a loss that falls."""

from __future__ import annotations

import json

import pytest

from labkit import LabkitError, lora, models, sft


def test_task_rows_round_trip_through_a_chat_jsonl_file(tmp_path):
    rows = lora.load_task("train")[:5]
    path = sft.save_chat_jsonl(sft.to_chat_rows(rows), tmp_path / "mine.jsonl")
    back = sft.load_chat_jsonl(path)
    assert [c["messages"][-1]["content"] for c in back] == [r["answer"] for r in rows]
    pairs = sft.prompt_completion(back)
    assert pairs[0]["completion"] == [{"role": "assistant", "content": rows[0]["answer"]}]
    assert pairs[0]["prompt"][0]["content"].endswith(rows[0]["sentence"])


@pytest.mark.parametrize("line, message", [
    ('{"text": "hello"}', '"messages" list'),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "end with the assistant"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "user turn"),
    ('{"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "role from"),
    ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}', "non-empty"),
    ("not json", "not JSON"),
])
def test_a_bad_line_is_refused_with_its_line_number_and_what_is_accepted(tmp_path, line, message):
    good = json.dumps(sft.to_chat_rows(lora.load_task("train")[:1])[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(LabkitError, match=message) as err:
        sft.load_chat_jsonl(path)
    assert "2" in str(err.value).split(":")[0]  # names the second line / conversation


def test_the_chat_template_renders_what_the_hand_written_loop_trains_on():
    tokenizer = lora.ensure_chat_template(models.load_bundled_transformers().tokenizer)
    row = lora.load_task("heldout")[0]
    messages = sft.to_chat_rows([row])[0]["messages"]
    assert tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == \
        lora.chat_prompt(row["sentence"])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full == lora.chat_prompt(row["sentence"]) + row["answer"] + lora.END_OF_TURN + "\n"


def test_trl_trains_a_toy_gemma_on_the_answers_only_and_its_loss_falls():
    pytest.importorskip("trl")
    tokenizer = models.load_bundled_transformers().tokenizer
    cfg = models.load_config("gemma-3-270m")
    cfg.update(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
               num_key_value_heads=1, head_dim=16, max_position_embeddings=128, sliding_window=64)
    cfg.pop("layer_types", None)
    toy = models.build_random_model(cfg, dtype="fp32", device="cpu", seed=0).model
    conversations = sft.to_chat_rows(lora.load_task("train")[:8]) * 4
    model, run = sft.train_with_trl(toy, tokenizer, conversations, steps=6, batch_size=4, lr=5e-2)
    assert run.steps == 6 and run.losses[-1] < run.losses[0], run.losses
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0  # LoRA adapters, nothing else
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
