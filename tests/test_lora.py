"""labkit.lora: the from-scratch layer against peft, training that resumes, bad input, the task's scoring, the
GGUF mapping, and (on the real bundled model) a held-out score that rises."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from tiny_models import tiny_gemma

from labkit import LabkitError, lora, models, vram
from labkit.check import evaluate, exercises
from labkit.paths import datasets_dir


def toy_examples(n: int = 12, length: int = 10, seed: int = 0) -> list[lora.Example]:
    """Random prompts, each followed by the same fixed 'answer' (a format to learn, like the real task)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(5, 300, (length // 2,), generator=gen).tolist()
        answer = [7, 11, 13, 17, 19][: length - length // 2]
        out.append(lora.Example(prompt + answer, [-100] * len(prompt) + answer))
    return out


# ----------------------------------------------------------------------------- LoRA from scratch vs peft


def test_lora_linear_starts_as_the_base_and_equals_peft_given_the_same_a_and_b():
    base = tiny_gemma()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        reference = base(input_ids=ids).logits
    ours = copy.deepcopy(base)
    wrapped = lora.inject_lora(ours, rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    assert len(wrapped) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in wrapped)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, reference), "B = 0: step 0 must be the base model exactly"

    theirs = lora.add_lora(copy.deepcopy(base), rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so the comparison means something
    assert lora.copy_peft_adapter(theirs.state_dict(), ours) == 8
    with torch.no_grad():
        expected, got = theirs(input_ids=ids).logits, ours(input_ids=ids).logits
    assert not torch.allclose(expected, reference, atol=1e-3), "the adapter must change the output"
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_trainable_parameters_equal_the_formula_and_peft():
    base = tiny_gemma()
    ours = copy.deepcopy(base)
    lora.inject_lora(ours, rank=4, alpha=8, target_modules="all-linear")
    shapes = [tuple(m.weight.shape) for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]
    expected = lora.lora_parameter_count(shapes, 4)
    assert lora.trainable_parameters(ours)[0] == expected
    peft_model = lora.add_lora(copy.deepcopy(base), rank=4, target_modules="all-linear")
    assert peft_model.get_nb_trainable_parameters()[0] == expected
    assert vram.estimate_training(base.config, "lora", lora_rank=4).inputs["trainable_parameters"] == expected


def test_merged_weight_gives_the_layer_output():
    layer = lora.LoRALinear(torch.nn.Linear(6, 5, bias=False), rank=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ layer.merged_weight().T)
    assert layer.scaling == 2


# ----------------------------------------------------------------------------- training, checkpoints, resume


def _peft_tiny(seed: int = 0):
    return lora.add_lora(tiny_gemma(seed), rank=4, alpha=8, target_modules=["q_proj", "v_proj"], seed=seed)


def test_training_lowers_the_loss():
    model = lora.add_lora(tiny_gemma(), rank=4, alpha=8, target_modules="all-linear")
    result = lora.train(model, toy_examples(), steps=25, batch_size=4, lr=1e-2, progress=False)
    assert len(result.losses) == 25 and result.tokens == 25 * 4 * 10
    assert sum(result.losses[-5:]) / 5 < 0.85 * sum(result.losses[:5]) / 5  # without the step it stays at ln(300)


def test_an_interrupted_run_resumes_and_ends_exactly_like_an_uninterrupted_one(tmp_path, capsys):
    examples = toy_examples()
    straight = _peft_tiny()
    done = lora.train(straight, examples, steps=6, batch_size=4, lr=1e-2, output_dir=tmp_path / "a",
                      checkpoint_every=2, progress=False)

    def stop_at_3(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lora.train(_peft_tiny(), examples, steps=6, batch_size=4, lr=1e-2, output_dir=tmp_path / "b",
                   checkpoint_every=2, on_step=stop_at_3, progress=False)
    assert "run again to resume" in capsys.readouterr().out
    resumed_model = _peft_tiny()  # a fresh kernel: same seed, the checkpoint brings the trained state back
    resumed = lora.train(resumed_model, examples, steps=6, batch_size=4, lr=1e-2, output_dir=tmp_path / "b",
                         checkpoint_every=2, progress=False)
    assert resumed.resumed_from == 3
    assert resumed.losses == pytest.approx(done.losses, rel=1e-5)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_model.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a, b, msg=name)

    again = lora.train(_peft_tiny(), examples, steps=6, batch_size=4, lr=1e-2, output_dir=tmp_path / "b",
                       progress=False)
    assert again.resumed_from == 6 and again.tokens == 0, "a finished run returns at once"
    with pytest.raises(LabkitError, match="different settings.*lr"):
        lora.train(_peft_tiny(), examples, steps=6, batch_size=4, lr=5e-3, output_dir=tmp_path / "b", progress=False)


def test_out_of_memory_gives_advice_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    model, examples = _peft_tiny(), toy_examples()
    real_loss, calls = lora.answer_loss, []

    def loss_that_runs_out(*args):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(*args)

    monkeypatch.setattr(lora, "answer_loss", loss_that_runs_out)
    with pytest.raises(LabkitError, match=r"out of memory at step 3.*batch of 4 x 10 tokens.*batch_size=2") as err:
        lora.train(model, examples, steps=6, batch_size=4, output_dir=tmp_path, checkpoint_every=5, progress=False)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert torch.load(tmp_path / lora.CHECKPOINT, weights_only=False)["step"] == 2


def test_batches_cover_every_row_once_per_epoch():
    seen = [i for step in range(3) for i in lora.batch_indices(step, 4, 12, seed=1)]
    assert sorted(seen) == list(range(12))
    assert lora.batch_indices(5, 4, 12, seed=1) == lora.batch_indices(5, 4, 12, seed=1)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_training():
    model = tiny_gemma()
    with pytest.raises(LabkitError, match="unknown LoRA target module 'qkv'.*q_proj"):
        lora.add_lora(model, target_modules=["qkv"])
    with pytest.raises(LabkitError, match="unknown LoRA target module 'c_attn'"):
        lora.inject_lora(copy.deepcopy(model), target_modules="c_attn")
    for rank in (0, -2, 1.5):
        with pytest.raises(LabkitError, match="rank must be a whole number of 1 or more"):
            lora.add_lora(model, rank=rank)
    with pytest.raises(LabkitError, match="dataset is empty"):
        lora.check_rows([])
    with pytest.raises(LabkitError, match="dataset is empty"):
        lora.train(_peft_tiny(), [], steps=3)
    with pytest.raises(LabkitError, match="row 1 .*\"sentence\" and \"answer\""):
        lora.check_rows([{"sentence": "a", "answer": "b"}, {"sentence": "no answer"}])
    frozen = tiny_gemma().requires_grad_(False)
    with pytest.raises(LabkitError, match="no trainable parameters"):
        lora.train(frozen, toy_examples(), steps=3)
    with pytest.raises(LabkitError, match="steps must be"):
        lora.train(_peft_tiny(), toy_examples(), steps=0)


def test_sequence_length_over_the_context_is_refused():
    tokenizer = _WordTokenizer()
    rows = [{"sentence": "Oslo: sunny, 3 degrees.", "answer": '{"city": "Oslo"}'}]
    with pytest.raises(LabkitError, match="over the model's context of 64"):
        lora.encode_rows(tokenizer, rows, max_len=65, context=64)
    with pytest.raises(LabkitError, match="over max_len=5"):
        lora.encode_rows(tokenizer, rows, max_len=5, context=64)
    (example,) = lora.encode_rows(tokenizer, rows, max_len=64, context=64)
    answer = tokenizer(rows[0]["answer"] + lora.END_OF_TURN)["input_ids"]
    assert example.labels[-len(answer):] == answer and set(example.labels[:-len(answer)]) == {-100}


class _WordTokenizer:
    """Splits on spaces: enough to test where the labels go."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [hash(w) % 1000 for w in text.split(" ")]}


# ----------------------------------------------------------------------------- the task and its score


def test_task_splits_do_not_overlap_and_regenerate_identically():
    train, heldout = lora.load_task("train"), lora.load_task("heldout")
    assert len(train) >= 200 and len(heldout) >= 40
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in heldout}
    train_cities = {json.loads(r["answer"])["city"] for r in train}
    assert not train_cities & {json.loads(r["answer"])["city"] for r in heldout}
    sys.path.insert(0, str(datasets_dir() / "lora_task"))
    import build

    assert build.rows(build.TRAIN_CITIES, build.TRAIN_PATTERNS, 240, seed=7) == train
    assert all(lora.parse_answer(r["answer"]) is not None for r in train + heldout)
    with pytest.raises(LabkitError, match="unknown split 'test'"):
        lora.load_task("test")


def test_scoring_counts_valid_and_exact_answers():
    rows = [{"sentence": "s", "answer": '{"city": "Oslo", "sky": "sunny", "temp_c": 3}'}] * 4
    outputs = ['{"city": "Oslo", "sky": "sunny", "temp_c": 3}',   # exact
               '{"city": "Oslo", "sky": "rainy", "temp_c": 3}',   # valid, wrong field
               '{"city": "Oslo", "sky": "sunny", "temp_c": "3"}',  # wrong type
               'The weather in Oslo is sunny.']                    # not JSON
    score = lora.score_answers(rows, outputs)
    assert (score.valid, score.exact, score.n) == (0.5, 0.25, 4)
    assert lora.parse_answer('{"city": "Oslo", "sky": "sunny"}') is None
    with pytest.raises(LabkitError, match="one output per row"):
        lora.score_answers(rows, outputs[:2])


def test_lora_plan_has_the_source_config_trainable_count():
    rows = {r["method"]: r for r in lora.lora_plan("llama-3.1-8b", rank=16, target_modules="all-linear")}
    c = models.load_config("llama-3.1-8b")
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    per_layer = 16 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    assert rows["lora"]["trainable"] == rows["qlora"]["trainable"] == per_layer * c["num_hidden_layers"]
    assert rows["full"]["total_gib"] > rows["lora"]["total_gib"] > rows["qlora"]["total_gib"]
    assert "qlora" in lora.plan_text(list(rows.values()))


# ----------------------------------------------------------------------------- GGUF names


# ----------------------------------------------------------------------------- the real bundled model


def test_lora_training_raises_the_held_out_score():
    """The course's run (profile-sized; shared with notebook 07 through labkit's cache): the held-out share of valid
    answers rises from the base model's to at least 80%, and exact answers rise too."""
    from labkit.profiles import profile

    steps = profile().train_steps
    peft_model, tokenizer, run = lora.train_bundled_adapter(steps, device="cpu")
    rows = lora.load_task("heldout")
    after = lora.evaluate(peft_model, tokenizer, rows)
    with peft_model.disable_adapter():
        before = lora.evaluate(peft_model, tokenizer, rows)
    assert run.losses[-1] < run.losses[0] / 4
    assert after.valid >= 0.8 and after.valid - before.valid >= 0.5, (before, after)
    assert after.exact - before.exact >= 0.3, (before, after)


def test_scoring_stops_a_rambling_model_early_with_the_same_score():
    loaded = models.load_bundled_transformers()
    rows = lora.load_task("heldout")[:4]
    sentences = [r["sentence"] for r in rows]
    full = lora.generate_answers(loaded.model, loaded.tokenizer, sentences, max_new_tokens=12, progress=False)
    early = lora.generate_answers(loaded.model, loaded.tokenizer, sentences, max_new_tokens=12, progress=False,
                                  stop_when_invalid=True)
    assert [len(e) <= len(f) and f.startswith(e) for e, f in zip(early, full)] == [True] * 4
    assert lora.score_answers(rows, early).valid == lora.score_answers(rows, full).valid


# ----------------------------------------------------------------------------- exercises: each slip is named

SHAPES = [(1024, 640), (128, 640)]  # not the notebook's (1024, 640), (256, 640), where only-A and only-B coincide


@pytest.mark.parametrize("exercise_id, inputs, slip, answer", [
    ("07.lora_params", dict(shapes=SHAPES, rank=8), "only A", 8 * 640 * 2),
    ("07.lora_params", dict(shapes=SHAPES, rank=8), "only B", 8 * (1024 + 128)),
    ("07.lora_params", dict(shapes=SHAPES, rank=8), "full matrices", 1024 * 640 + 128 * 640),
    ("07.lora_params", dict(shapes=SHAPES, rank=8), "rank", 1024 + 640 + 128 + 640),
    ("07.scaling", dict(rank=8, alpha=16), "other way round", 0.5),
    ("07.scaling", dict(rank=8, alpha=16), "alpha alone", 16),
    ("07.valid_rate", dict(outputs=['{"city": "Oslo", "sky": "sunny", "temp_c": 3}', "no"] * 5), "number of valid", 5),
    ("07.valid_rate", dict(outputs=['{"city": "Oslo", "sky": "sunny", "temp_c": 3}', "no"] * 5), "percentage", 50),
    ("07.valid_rate", dict(outputs=['{"city": "Oslo", "sky": "sunny", "temp_c": 3}'] * 3 + ["no"] * 7), "invalid",
     0.7),
])
def test_each_slip_of_the_lora_exercises_is_named_when_made(exercise_id, inputs, slip, answer):
    verdict = evaluate(exercise_id, answer, **inputs)
    assert not verdict.passed and verdict.slip and slip in verdict.slip, verdict
    assert evaluate(exercise_id, exercises()[exercise_id].expected(**inputs), **inputs).passed


def _merge_layer():
    torch.manual_seed(0)
    layer = lora.LoRALinear(torch.nn.Linear(16, 12, bias=False), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


@pytest.mark.parametrize("slip", ["leaving out the scale", "only the update", "scaling W too"])
def test_each_slip_of_the_merge_exercise_is_named_and_a_misshapen_answer_gets_a_message(slip):
    layer = _merge_layer()
    w, a, b, s = layer.base.weight.detach(), layer.lora_A.detach(), layer.lora_B.detach(), layer.scaling
    answers = {"leaving out the scale": w + b @ a, "only the update": s * b @ a, "scaling W too": (w + b @ a) * s}
    message = evaluate("07.merged_weight", answers[slip], layer=layer).message
    assert slip in message
    assert evaluate("07.merged_weight", w + s * b @ a, layer=layer).passed
    assert "out x in" in evaluate("07.merged_weight", a @ a.T, layer=layer).message  # A @ A.T: r x r
    assert "torch tensor" in evaluate("07.merged_weight", [[1.0]], layer=layer).message


def test_every_exercise_of_notebook_07_declares_at_least_two_slips():
    for exercise_id in ("07.lora_params", "07.scaling", "07.valid_rate"):
        assert len(exercises()[exercise_id].slips) >= 2, exercise_id
    assert len(lora._merged_weight_slips(_merge_layer())) >= 2


# ----------------------------------------------------------------------------- memory table, GPU check, 4-bit merge


def test_training_memory_table_adds_up_to_the_estimate_it_prints():
    model = lora.add_lora(tiny_gemma(), rank=4, alpha=8, target_modules=["q_proj", "v_proj"])
    mem = lora.training_memory(model, "lora", seq_len=16, rank=4, target_modules=["q_proj", "v_proj"])
    rows = dict(line.rsplit(maxsplit=1) for line in mem.table().splitlines()[1:])
    parts = sum(float(v) for k, v in rows.items() if k.strip() not in ("sum (estimate)", "measured"))
    assert float(rows["sum (estimate)"]) == pytest.approx(parts, abs=0.003)
    assert float(rows["sum (estimate)"]) == pytest.approx(mem.estimate / 2**30, abs=0.001)


def test_merging_the_trained_adapter_into_a_4bit_base_stays_close_to_the_adapter(tmp_path):
    """On a CPU, bitsandbytes repacks 4-bit weights at the first inference; the merge must unpack them first, or it
    writes nonsense (KLD of tens of nats). Measured on the course's adapter: the merge costs little."""
    pytest.importorskip("bitsandbytes")
    from labkit.profiles import profile

    peft_model, tokenizer, _ = lora.train_bundled_adapter(profile().train_steps, device="cpu")
    peft_model.save_pretrained(tmp_path / "adapter")
    four = lora.merge_into_4bit(tmp_path / "adapter", peft_model, tokenizer, lora.load_task("heldout")[:4])
    assert 0 < four.base_to_4bit < four.merge_in_4bit < 5, four  # merging rounds the update: it costs more than
    assert four.merged_vs_full < 5, four                             # the 4-bit base, but is no nonsense (28 nats)
    assert "merged INTO the NF4 weights" in str(four)
