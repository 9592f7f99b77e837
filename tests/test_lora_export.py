"""labkit.lora_export: the GGUF mapping of Gemma 3's weights, the untrained export against the bundled file in
llama.cpp, and a trained export that carries its chat template and end-of-turn token, so a server that reads them
(as Ollama and LM Studio do) stops after the answer."""

from __future__ import annotations

import pytest
from tiny_models import tiny_gemma

from labkit import LabkitError, lora, lora_export, models


def test_gguf_names_cover_gemma3_and_add_one_to_norms():
    model = tiny_gemma()
    tensors = lora_export.to_gguf_tensors(model.state_dict())
    assert "token_embd.weight" in tensors and "blk.1.attn_q_norm.weight" in tensors
    assert not any(k.startswith("output.") for k in tensors), "Gemma ties the output head to the embeddings"
    norm = model.model.layers[0].input_layernorm.weight.detach().numpy()
    assert (tensors["blk.0.attn_norm.weight"] == norm + 1).all()
    with pytest.raises(LabkitError, match="only Gemma 3"):
        lora_export.gguf_name("transformer.h.0.attn.c_attn.weight")


def test_gguf_export_mapping_round_trips_the_bundled_weights():
    """The dense weights transformers de-quantized from the bundled GGUF, mapped back, equal the GGUF's own
    (so no q/k permutation is needed for Gemma 3, and the norms' +1 is right)."""
    from labkit.gguf_files import read_tensor

    state = models.load_bundled_transformers().model.state_dict()
    ours = lora_export.to_gguf_tensors({k: v for k, v in state.items() if k.startswith(("model.layers.0.", "model.norm"))})
    assert len(ours) == 14
    for name, array in ours.items():
        original = read_tensor(models.bundled_gguf_path(), name).reshape(array.shape)
        assert abs(original - array.astype("float32")).max() < 2e-3 * max(1.0, abs(original).max()), name


def test_untrained_export_runs_in_llama_cpp_like_the_bundled_model(tmp_path):
    """Round trip: the bundled model de-quantized into transformers, exported back to GGUF (F16), gives llama.cpp
    the same greedy tokens as the bundled Q4_K_M file."""
    pytest.importorskip("llama_cpp")
    dense = models.load_bundled_transformers().model
    path = lora_export.export_gguf(dense, tmp_path / "roundtrip-F16.gguf")
    prompt = lora.chat_prompt("Oslo: sunny, 3 degrees.") + '{"city": "'
    tokens = {}
    for name, gguf_file in (("bundled", None), ("exported", path)):
        llm = models.load_llama_cpp(gguf_file, n_ctx=256, n_gpu_layers=0).model
        out = llm.create_completion(prompt, max_tokens=12, temperature=0)
        tokens[name] = llm.tokenize(out["choices"][0]["text"].encode(), add_bos=False, special=True)
        del llm
    assert len(tokens["bundled"]) >= 4
    assert tokens["exported"] == tokens["bundled"]




def test_the_served_fine_tune_ends_its_answer_with_the_template_in_the_file(tmp_path):
    """The course's trained adapter, merged and exported: the file carries Gemma's chat template and <end_of_turn> as
    EOS; served with the template read from the file, the answer ends on its own (finish_reason 'stop', well before
    max_tokens) and is the task's JSON."""
    pytest.importorskip("llama_cpp")
    from gguf import GGUFReader

    from labkit.profiles import profile

    peft_model, _, _ = lora.train_bundled_adapter(profile().train_steps, device="cpu")
    merged = peft_model.merge_and_unload()
    path = lora_export.export_gguf(merged, tmp_path / "weather-json-F16.gguf")
    fields = GGUFReader(str(path)).fields
    eos = int(fields["tokenizer.ggml.eos_token_id"].contents())
    assert eos == lora_export.token_id_in_gguf(models.bundled_gguf_path(), lora.END_OF_TURN) != 1  # not <eos>
    assert fields["tokenizer.chat_template"].contents() == lora.GEMMA_CHAT_TEMPLATE
    with pytest.raises(LabkitError, match="no token"):
        lora_export.token_id_in_gguf(path, "<not a token>")
    answer = lora_export.served_answer(path, "Weather to JSON: In Vienna it is foggy with 4 degrees.", max_tokens=48)
    assert answer.finish_reason == "stop" and answer.completion_tokens < 48, answer
    assert lora.parse_answer(answer.text) == {"city": "Vienna", "sky": "foggy", "temp_c": 4}, answer
