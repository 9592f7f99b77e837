"""labkit.architecture: the model's shape read from every kind of source, and the weight inventory pinned
against the parameters transformers creates (tiny configs, the shipped configs, random configs of every family)."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit import architecture as arch
from labkit.errors import LabkitError
from labkit.models import build_random_model, list_configs, load_config, to_transformers_config

# ----------------------------------------------------------------------------- parameters and weights


def test_parameter_count_matches_the_built_model(tiny_family, tiny_configs):
    model = build_random_model(tiny_configs[tiny_family], dtype="fp32").model
    assert arch.parameter_count(tiny_configs[tiny_family]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_configs())
def test_parameter_count_of_every_shipped_config_is_exact(name):
    model = build_random_model(name, device="meta").model
    assert arch.parameter_count(name) == sum(p.numel() for p in model.parameters())


def test_linear_tensors_are_exactly_the_nn_linear_layers_bitsandbytes_replaces(tiny_family, tiny_configs):
    model = build_random_model(tiny_configs[tiny_family], dtype="fp32").model
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if type(m) is torch.nn.Linear and name != "lm_head")
    tensors = arch.formula_weight_tensors(tiny_configs[tiny_family])
    assert sum(t.numel for t in tensors if t.kind == "linear") == linear
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)  # GPT-OSS: biases too
    assert sum(t.numel for t in tensors if t.kind == "experts") == experts


def test_architecture_reads_grouping_windows_experts_and_latent_attention():
    llama = arch.architecture("llama-3.1-8b")
    assert (llama.num_layers, llama.num_heads, llama.num_kv_heads, llama.head_dim) == (32, 32, 8, 128)
    assert llama.kv_grouping.startswith("GQA (4 queries") and not llama.is_moe and not llama.is_mla
    assert arch.architecture("phi-3-mini").kv_grouping == "MHA"
    gemma = arch.architecture("gemma-3-270m")
    assert gemma.kv_grouping == "MQA" and gemma.sliding_window == 512
    assert gemma.layer_types.count("full") == 3 and gemma.layer_types.count("sliding") == 15
    mixtral = arch.architecture("mixtral-8x7b")
    assert (mixtral.num_experts, mixtral.experts_per_token) == (8, 2) and mixtral.layer_kinds() == ["moe"] * 32
    deepseek = arch.architecture("deepseek-v2-lite")
    assert deepseek.is_mla and deepseek.kv_grouping == "MLA" and deepseek.layer_kinds()[0] == "dense"


# ----------------------------------------------------------------------------- any model a learner brings


def _family_config(family: str, d: dict) -> dict:
    """A random small config of `family` from drawn sizes `d` (hypothesis)."""
    heads = d["heads"]
    base = dict(model_type=family, hidden_size=d["hidden"], num_hidden_layers=d["layers"], num_attention_heads=heads,
                num_key_value_heads=heads // d["kv_div"], intermediate_size=d["inter"], vocab_size=d["vocab"],
                tie_word_embeddings=d["tie"], max_position_embeddings=4096)
    experts = dict(num_experts=d["experts"], num_experts_per_tok=min(d["top_k"], d["experts"]))
    if family == "qwen2":
        base["tie_word_embeddings"] = True
    if family in ("qwen3", "qwen3_moe"):
        base["head_dim"] = d["head_dim"]
    if family == "gemma2":
        base.update(head_dim=d["head_dim"], query_pre_attn_scalar=d["head_dim"], sliding_window=32)
    if family == "gemma3_text":
        base.update(head_dim=d["head_dim"], query_pre_attn_scalar=d["head_dim"], sliding_window=32)
    if family == "phi3":
        base.update(pad_token_id=0, original_max_position_embeddings=4096)
    if family in ("mixtral", "granitemoe", "gpt_oss"):
        base.update(num_local_experts=d["experts"], num_experts_per_tok=experts["num_experts_per_tok"])
    if family == "gpt_oss":
        base.update(head_dim=d["head_dim"], sliding_window=32,
                    layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(d["layers"])])
    if family == "olmoe":
        base.update(experts)
    if family in ("qwen2_moe", "qwen3_moe"):
        base.update(experts, moe_intermediate_size=d["moe_inter"], decoder_sparse_step=d["sparse_step"],
                    mlp_only_layers=[0] if d["dense_first"] else [])
        if family == "qwen2_moe":
            base["shared_expert_intermediate_size"] = d["inter"] + 8
    if family == "deepseek_v2":
        base.update(experts, n_routed_experts=d["experts"], n_shared_experts=d["sparse_step"] - 1,
                    moe_intermediate_size=d["moe_inter"], kv_lora_rank=16, q_lora_rank=None if d["tie"] else 24,
                    qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, first_k_dense_replace=1,
                    num_key_value_heads=heads, rope_scaling=None)
    return base


_drawn = st.fixed_dictionaries({
    "hidden": st.sampled_from([32, 64]), "heads": st.sampled_from([2, 4]), "kv_div": st.sampled_from([1, 2]),
    "layers": st.integers(1, 3), "inter": st.integers(8, 48), "vocab": st.integers(16, 80), "tie": st.booleans(),
    "head_dim": st.sampled_from([8, 16]), "experts": st.integers(2, 6), "top_k": st.integers(1, 2),
    "moe_inter": st.integers(4, 24), "sparse_step": st.integers(1, 2), "dense_first": st.booleans(),
})


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([f for f in arch.FORMULA_FAMILIES if f != "gemma3"]), _drawn)
def test_formula_count_equals_the_meta_device_count_for_random_configs_of_every_family(family, d):
    """The formulas the course teaches give exactly the parameters transformers creates, tensor kind by kind
    (gemma3 is the multimodal wrapper of gemma3_text: its vision tower comes from the meta count)."""
    cfg = _family_config(family, d)
    check = arch.weight_check(cfg)
    assert check.formula is not None and check.agree, (cfg, check)
    assert arch.parameter_count(cfg) == check.meta
    net = build_random_model(cfg, device="meta").model
    assert check.meta == sum(p.numel() for p in net.parameters())


NEW_SHIPPED = {  # published totals and active parameters (model cards), in billions; True: the publisher
    # leaves the input embedding (a lookup) out of the active count, as DeepSeek does
    "qwen3-30b-a3b": (30.5, 3.3, False), "qwen1.5-moe-a2.7b": (14.3, 2.7, False), "olmoe-1b-7b": (6.9, 1.3, False),
    "gpt-oss-20b": (20.9, 3.6, True), "granite-3.0-3b-a800m": (3.3, 0.8, True), "qwen3-8b": (8.2, 8.2, False),
    "olmo-2-7b": (7.3, 7.3, False),
}


@pytest.mark.parametrize("name", sorted(NEW_SHIPPED))
def test_new_families_total_and_active_parameters_match_the_model_cards(name):
    total, active, without_embedding = NEW_SHIPPED[name]
    assert arch.weight_check(name).agree, arch.weight_check(name)
    assert arch.parameter_count(name) / 1e9 == pytest.approx(total, abs=0.05)
    embedding = sum(t.numel for t in arch.weight_tensors(name) if t.kind == "embedding")
    counted = arch.active_parameter_count(name) - (embedding if without_embedding else 0)
    assert counted / 1e9 == pytest.approx(active, abs=0.06)


def test_gpt_oss_sinks_and_expert_biases_are_counted_and_priced(tiny_configs):
    net = build_random_model(tiny_configs["gpt_oss"], dtype="bf16", device="meta").model
    tensors = {t.name: t for t in arch.weight_tensors(tiny_configs["gpt_oss"])}
    assert tensors["layers.self_attn.sinks"].numel == 2 * 4  # one per head and layer
    assert tensors["layers.mlp.experts.gate_up_proj_bias"].numel == 2 * 4 * 2 * 32
    assert sum(t.numel for t in tensors.values()) == sum(p.numel() for p in net.parameters())


def test_a_model_type_without_a_formula_is_read_off_the_meta_device():
    cfg = dict(model_type="starcoder2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048)
    net = build_random_model(cfg, device="meta").model
    check = arch.weight_check(cfg)
    assert check.formula is None and check.meta == sum(p.numel() for p in net.parameters())
    assert arch.architecture(cfg).generic and "no formula" in str(check)
    assert arch.parameter_count(cfg) == check.meta
    with pytest.raises(LabkitError, match="no formula"):
        arch.formula_weight_tensors(cfg)


def test_architecture_reads_a_config_json_path_a_folder_a_transformers_config_and_a_dict(tmp_path):
    raw = load_config("qwen3-30b-a3b")
    folder = tmp_path / "my-moe"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    expected = arch.architecture("qwen3-30b-a3b")
    for source in (str(folder / "config.json"), folder, str(folder), raw, to_transformers_config(raw)):
        a = arch.architecture(source)
        assert (a.num_layers, a.num_experts, a.expert_intermediate, a.layer_types) == \
            (expected.num_layers, expected.num_experts, expected.expert_intermediate, expected.layer_types), source
        assert arch.parameter_count(source) == arch.parameter_count("qwen3-30b-a3b"), source
    assert arch.architecture(folder / "config.json").name == "my-moe"


def _fake_hub_cache(root: Path, repo_id: str, config: dict) -> None:
    """The layout huggingface_hub keeps: models--org--name/refs/main and snapshots/<commit>/config.json."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_hub_ids_come_from_the_local_cache_offline_with_a_clear_message_when_missing(tmp_path, monkeypatch,
                                                                                      tiny_configs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "learner/tiny-olmoe", tiny_configs["olmoe"])
    assert arch.architecture("learner/tiny-olmoe").model_type == "olmoe"
    _fake_hub_cache(tmp_path, "Qwen/Qwen3-30B-A3B", load_config("qwen3-30b-a3b"))
    assert arch.parameter_count("Qwen/Qwen3-30B-A3B") == arch.parameter_count("qwen3-30b-a3b")
    with pytest.raises(LabkitError, match="not in your local Hugging Face cache.*HF_HUB_OFFLINE.*precache"):
        arch.architecture("someone/not-downloaded")


REFUSALS = [
    (dict(model_type="mamba", hidden_size=64, num_hidden_layers=2, vocab_size=100), "no attention layers"),
    (dict(model_type="rwkv", hidden_size=64, num_hidden_layers=2, vocab_size=100), "no attention layers"),
    (dict(model_type="llama", hidden_size=64, num_attention_heads=4, vocab_size=100), "'num_hidden_layers'"),
    (dict(model_type="mixtral", hidden_size=64, num_hidden_layers=2, num_attention_heads=4), "'vocab_size'"),
    (dict(model_type="llama", hidden_size=64, num_hidden_layers=0, num_attention_heads=4, vocab_size=100),
     "positive whole number"),
    (dict(model_type="not-a-model", hidden_size=64), "transformers cannot build"),
    (dict(model_type="t5", d_model=64, num_layers=2, num_heads=4, vocab_size=100), "no causal language model"),
    (dict(model_type="qwen3_next", hidden_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=100),
     "layers without standard attention"),
    (dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
          rope_parameters={"rope_type": "no-such-rope"}), "transformers cannot build"),
]


@pytest.mark.parametrize("config, message", REFUSALS, ids=[f"{c['model_type']}-{m[:12]}" for c, m in REFUSALS])
def test_configs_it_cannot_read_are_refused_with_what_is_wrong(config, message):
    with pytest.raises(LabkitError, match=message) as info:
        arch.weight_tensors(config)  # reads the architecture, then builds it on the meta device
    assert "Traceback" not in str(info.value)


def test_paths_and_names_that_do_not_exist_are_refused(tmp_path):
    with pytest.raises(LabkitError, match="no such config file"):
        arch.architecture(str(tmp_path / "missing" / "config.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LabkitError, match="not a JSON config file"):
        arch.architecture(str(tmp_path / "bad.json"))
    with pytest.raises(LabkitError, match="unknown model config 'llama-9-1t'.*Hub id"):
        arch.architecture("llama-9-1t")
    with pytest.raises(LabkitError, match="model_type"):
        arch.architecture({"hidden_size": 8})
    with pytest.raises(LabkitError, match="cannot read an architecture from int"):
        arch.architecture(42)
