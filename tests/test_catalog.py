"""labkit.catalog: the model catalog, exact parameter counts from real configs, and the picker."""

import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers.utils import logging as hf_logging

from labkit import catalog, vram
from labkit.check import check
from labkit.errors import LabkitError
from labkit.formatting import GIB
from labkit.models import config_info, list_configs

warnings.filterwarnings("ignore", message=".*")  # transformers' notes about unused config keys
hf_logging.set_verbosity_error()

SHIPPED = list_configs()


# ------------------------------------------------------------------ exact parameter counts


@pytest.mark.parametrize("name", SHIPPED)
def test_count_matches_numel_of_the_built_model(name):
    assert catalog.count_parameters(name).total == catalog.count_built_parameters(name)


def _published_tolerance(value: float) -> float:
    """One unit in the last digit the publisher wrote (8.03 -> 0.01, 46.7 -> 0.1, 405 -> 1)."""
    text = repr(float(value)).rstrip("0").rstrip(".")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 10.0 ** -decimals


@pytest.mark.parametrize("name", SHIPPED)
def test_count_matches_the_published_total(name):
    entry = next(e for e in catalog.load_catalog() if e.config == name)
    computed_b = catalog.count_parameters(name).total / 1e9
    assert abs(computed_b - entry.params_b) <= _published_tolerance(entry.params_b), (computed_b, entry.params_b)


@pytest.mark.parametrize("name, published_b", [
    ("llama-3.1-8b", 8.03), ("mixtral-8x7b", 46.7), ("qwen2.5-7b", 7.6), ("gemma-2-9b", 9.2),
])
def test_headline_totals_from_the_issue(name, published_b):
    assert round(catalog.count_parameters(name).total / 1e9, len(str(published_b).split(".")[1])) == published_b


def test_moe_active_parameters_follow_each_publishers_convention():
    mixtral = catalog.count_parameters("mixtral-8x7b")
    assert round(mixtral.active / 1e9, 1) == 12.9  # Mistral counts every weight a token touches
    deepseek = catalog.count_parameters("deepseek-v2-lite")
    assert abs(deepseek.active_without_embedding / 1e9 - 2.4) < 0.1  # DeepSeek leaves out the embedding table
    assert deepseek.active > deepseek.active_without_embedding
    # memory holds every expert; a token multiplies with only top-k of them
    assert mixtral.experts == 32 * 8 * 3 * 4096 * 14336
    assert mixtral.total - mixtral.active == 32 * 6 * 3 * 4096 * 14336


def test_dense_models_are_fully_active_and_parts_add_up():
    for name in ("llama-3.1-8b", "gemma-2-2b", "phi-3-mini", "deepseek-v2-lite"):
        c = catalog.count_parameters(name)
        parts = c.embedding + c.lm_head + c.attention + c.mlp + c.experts + c.shared_experts + c.router + c.norms
        assert parts == c.total
    assert catalog.count_parameters("llama-3.1-8b").active == catalog.count_parameters("llama-3.1-8b").total


def test_tied_embeddings_are_counted_once():
    tied = catalog.count_parameters("llama-3.2-1b")
    assert tied.lm_head == 0 and tied.embedding == 128256 * 2048
    assert catalog.count_parameters("llama-3.1-8b").lm_head == 128256 * 4096


# random small configs of every supported architecture: the count must equal numel() of the built model
_tiny = st.fixed_dictionaries({
    "hidden": st.sampled_from([32, 64]), "heads": st.sampled_from([2, 4]), "kv_div": st.sampled_from([1, 2]),
    "layers": st.integers(1, 3), "inter": st.integers(8, 48), "vocab": st.integers(16, 80), "tie": st.booleans(),
    "bias": st.booleans(), "experts": st.integers(2, 5), "topk": st.integers(1, 2), "dense": st.integers(0, 2),
    "q_lora": st.sampled_from([None, 16]), "shared": st.integers(0, 2),
})


def _tiny_config(model_type: str, p: dict) -> dict:
    base = {"model_type": model_type, "vocab_size": p["vocab"], "hidden_size": p["hidden"],
            "num_hidden_layers": p["layers"], "num_attention_heads": p["heads"],
            "num_key_value_heads": p["heads"] // p["kv_div"], "intermediate_size": p["inter"],
            "tie_word_embeddings": p["tie"], "max_position_embeddings": 64,
            "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0}
    if model_type == "llama":
        base.update(attention_bias=p["bias"], mlp_bias=p["bias"])
    if model_type in ("gemma2", "gemma3_text"):
        base.update(head_dim=16, attention_bias=p["bias"], sliding_window=8)
    if model_type == "mixtral":
        base.update(num_local_experts=p["experts"], num_experts_per_tok=min(p["topk"], p["experts"]))
    if model_type == "deepseek_v2":
        base.update(n_routed_experts=p["experts"], num_experts_per_tok=min(p["topk"], p["experts"]),
                    moe_intermediate_size=p["inter"] // 2 + 1, first_k_dense_replace=p["dense"],
                    n_shared_experts=p["shared"], q_lora_rank=p["q_lora"], kv_lora_rank=16,
                    qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, attention_bias=p["bias"],
                    n_group=1, topk_group=1)
    topk = min(p["topk"], p["experts"])
    if model_type in ("qwen2_moe", "qwen3_moe"):
        base.update(num_experts=p["experts"], num_experts_per_tok=topk, moe_intermediate_size=p["inter"] // 2 + 1,
                    decoder_sparse_step=1, mlp_only_layers=[])
        if model_type == "qwen2_moe":
            base.update(shared_expert_intermediate_size=p["inter"])
    if model_type == "olmoe":
        base.update(num_experts=p["experts"], num_experts_per_tok=topk)
    if model_type in ("gpt_oss", "granitemoe"):
        base.update(num_local_experts=p["experts"], num_experts_per_tok=topk)
    return base


@pytest.mark.parametrize("model_type", catalog.SUPPORTED_MODEL_TYPES)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=_tiny)
def test_count_matches_numel_for_random_small_configs(model_type, p):
    config = _tiny_config(model_type, p)
    assert catalog.count_parameters(config).total == catalog.count_built_parameters(config)


# ------------------------------------------------------------------ architecture


def test_architecture_summary_reads_the_config():
    llama = catalog.architecture_summary("llama-3.1-8b")
    assert (llama["attention"], llama["gqa_ratio"], llama["head_dim"], llama["rope_theta"]) == ("GQA", 4, 128, 500000)
    assert llama["rope_scaling"].startswith("llama3") and llama["context"] == 131072 and not llama["tied_embeddings"]
    mixtral = catalog.architecture_summary("mixtral-8x7b")
    assert (mixtral["experts"], mixtral["experts_per_token"], mixtral["sliding_window"]) == (8, 2, None)
    gemma3 = catalog.architecture_summary("gemma-3-270m")
    assert (gemma3["attention"], gemma3["sliding_window"], gemma3["sliding_layers"]) == ("MQA", 512, 15)
    assert gemma3["rope_theta"] == 1_000_000 and gemma3["tied_embeddings"]
    assert catalog.architecture_summary("phi-3-mini")["attention"] == "MHA"
    deepseek = catalog.architecture_summary("deepseek-v2-lite")
    assert (deepseek["attention"], deepseek["experts"], deepseek["shared_experts"]) == ("MLA", 64, 2)
    assert catalog.architecture_summary("qwen2.5-7b")["sliding_window"] is None  # use_sliding_window: false


def test_architecture_rows_cover_every_shipped_config():
    rows = catalog.architecture_rows()
    assert [r["config"] for r in rows] == SHIPPED
    assert next(r for r in rows if r["config"] == "mixtral-8x7b")["experts"] == "2 of 8"


def test_published_vs_computed_has_a_source_for_every_shipped_config():
    rows = catalog.published_vs_computed()
    assert {r["config"] for r in rows} == set(SHIPPED)
    for r in rows:
        assert r["source"].startswith("https://") and abs(r["difference_pct"]) < 1.5


def test_readable_reports_cover_every_config_and_licence():
    report = catalog.parameter_report_rows()
    assert [r["config"] for r in report] == SHIPPED
    mixtral = next(r for r in report if r["config"] == "mixtral-8x7b")
    assert mixtral["published (B)"] == "46.7" and "vs 12.9B" in mixtral["active: computed vs published"]
    licences = catalog.licence_rows()
    assert {r["licence"] for r in licences} == {e.licence for e in catalog.load_catalog()}
    assert [r["commercial"] for r in licences] == sorted((r["commercial"] for r in licences),
                                                         key=["yes", "conditional", "no"].index)
    allowance = catalog.kv_allowance_rows(2048)
    assert len(allowance) == len(SHIPPED) and "exact KV at 2,048 tokens" in allowance[0]


# ------------------------------------------------------------------ bad configs


def test_config_missing_fields_names_them():
    with pytest.raises(LabkitError, match="hidden_size"):
        catalog.count_parameters({"model_type": "llama", "vocab_size": 10, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 8})
    with pytest.raises(LabkitError, match="num_local_experts"):
        catalog.count_parameters({**catalog._resolve("mistral-7b-v0.3")[0], "model_type": "mixtral",
                                  "num_experts_per_tok": 2})
    with pytest.raises(LabkitError, match="model_type"):
        catalog.count_parameters({"hidden_size": 64})
    with pytest.raises(LabkitError, match="n_shared_experts"):  # a field of the wrong type
        catalog.count_parameters({**catalog._resolve("deepseek-v2-lite")[0], "n_shared_experts": "two"})


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(LabkitError, match="llama") as err:
        catalog.count_parameters({"model_type": "mamba", "hidden_size": 8})
    assert "mamba" in str(err.value)
    with pytest.raises(LabkitError, match="llama-3.1-8b"):
        catalog.count_parameters("llama-9000")


@given(bad=st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3), st.booleans()))
def test_non_positive_or_non_integer_config_fields_are_refused(bad):
    config = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": bad,
              "num_attention_heads": 2, "intermediate_size": 8}
    with pytest.raises(LabkitError):
        catalog.count_parameters(config)


# ------------------------------------------------------------------ the catalog


def test_catalog_covers_the_families_the_course_names():
    names = " | ".join(e.name for e in catalog.load_catalog())
    for needed in ("Llama 3.1", "Llama 3.2", "Llama 3.3", "Code Llama", "Mistral 7B", "Mistral NeMo",
                   "Mistral Small", "Mixtral 8x7B", "Mixtral 8x22B", "Codestral", "Gemma 2", "Gemma 3",
                   "CodeGemma", "Qwen2.5 7B", "Qwen2.5-Coder", "Qwen2.5-Math", "Qwen2.5-VL", "Phi-3", "Phi-4",
                   "DeepSeek-V2", "DeepSeek-V3", "DeepSeek-R1", "DeepSeek-Coder-V2", "Command R+", "Falcon",
                   "Yi", "OLMo", "Pythia"):
        assert needed in names, needed


def test_openness_classes_follow_the_definitions():
    truly = {e.family for e in catalog.find_models(openness="truly-open")}
    assert {"olmo", "pythia"} <= truly
    assert all(e.openness == "restricted" for e in catalog.find_models(family="llama"))
    for e in catalog.load_catalog():
        if e.openness in ("truly-open", "open-weight"):
            assert e.commercial == "yes" and e.licence in ("Apache-2.0", "MIT"), e.id
        if e.commercial == "no":
            assert e.openness == "restricted", e.id


def test_every_benchmark_has_a_setting_and_a_source():
    scores = [b for e in catalog.load_catalog() for b in e.benchmarks]
    assert len(scores) >= 30
    for b in scores:
        assert b["name"] in ("MMLU", "HumanEval", "MATH") and 0 < b["score"] <= 100
        assert b["setting"] and b["source"].startswith("https://")
    assert catalog.benchmark_rows("MMLU")[0]["score"] >= catalog.benchmark_rows("MMLU")[-1]["score"]
    with pytest.raises(LabkitError, match="MMLU"):
        catalog.benchmark_rows("GSM8K")


def test_shipped_configs_and_catalog_agree():
    for e in catalog.load_catalog():
        if e.config:
            assert e.config in SHIPPED and config_info(e.config)["family"] == e.family
            assert config_info(e.config)["hf_id"] == e.hf_id
        assert (e.active_params_b is not None) == e.is_moe, e.id
    assert {e.config for e in catalog.load_catalog() if e.config} == set(SHIPPED)


def test_find_models_filters_and_refuses_unknown_values():
    code = catalog.find_models(speciality="code", commercial="yes")
    assert code and all("code" in e.specialities and e.commercial == "yes" for e in code)
    assert all(e.params_b <= 8 for e in catalog.find_models(max_params_b=8))
    with pytest.raises(LabkitError, match="llama"):
        catalog.find_models(family="gpt")
    with pytest.raises(LabkitError, match="code"):
        catalog.find_models(speciality="poetry")
    with pytest.raises(LabkitError):
        catalog.find_models(max_params_b=-1)


# ------------------------------------------------------------------ memory and the picker


def test_estimate_memory_is_vram_s_estimate_for_shipped_configs():
    est = catalog.estimate_memory("mixtral-8x7b", quant="Q4_K_M", context=4096)
    assert est.total == vram.estimate_inference("mixtral-8x7b", "Q4_K_M", context=4096).total
    assert est.weights == sum(vram.weight_bytes("mixtral-8x7b", "Q4_K_M").values())
    assert est.total / GIB > 25  # every expert must be loaded, not just the active 12.9B
    big = catalog.estimate_memory("llama-3.1-405b", quant="bf16")  # no shipped config: published count
    assert big.weights == pytest.approx(405e9 * 2) and big.overhead == 0.5 * GIB and "published" in big.notes[0]


def test_estimate_memory_honours_kv_dtype_and_overhead_for_configured_models():
    """Both were silently ignored for models with a shipped config (the estimate took vram's defaults)."""
    est = catalog.estimate_memory("mixtral-8x7b", context=4096)
    q8 = catalog.estimate_memory("mixtral-8x7b", context=4096, kv_dtype="Q8_0")
    assert q8.kv_cache == pytest.approx(est.kv_cache * 8.5 / 16) and q8.weights == est.weights
    assert catalog.estimate_memory("mixtral-8x7b", context=4096, overhead_gib=0).overhead == 0
    assert catalog.estimate_memory("mixtral-8x7b", context=4096, overhead_gib=2).overhead == 2 * GIB
    for r in catalog.recommend("code", 48, overhead_gib=3, top=None):
        assert r.memory.overhead == 3 * GIB, r.model.id
    with pytest.raises(LabkitError, match="overhead_gib"):
        catalog.estimate_memory("mixtral-8x7b", overhead_gib=-1)


def test_kv_allowance_is_within_a_factor_of_three_for_grouped_attention():
    for name in SHIPPED:
        if catalog.architecture_summary(name)["attention"] == "MHA":
            continue
        exact = sum(vram.kv_cache_bytes_per_token(name, "fp16").values())
        allowance = catalog.kv_allowance_bytes_per_token(catalog.count_parameters(name).active / 1e9)
        assert 1 / 3 <= allowance / exact <= 3, name


@settings(max_examples=40, deadline=None)
@given(task=st.sampled_from(catalog.TASKS), vram=st.floats(1, 200), licence=st.sampled_from(list(catalog.LICENCE_FILTERS)),
       quant=st.sampled_from(["bf16", "Q8_0", "Q4_K_M"]), context=st.sampled_from([2048, 4096, 8192, 32768]))
def test_every_recommendation_fits_matches_and_is_explained(task, vram, licence, quant, context):
    recs = catalog.recommend(task, vram, quant=quant, licence=licence, context=context, top=None)
    for r in recs:
        assert r.memory.total / GIB <= vram and task in r.model.specialities and r.model.context >= context
        assert catalog._licence_ok(r.model, licence) and quant in r.reason and r.model.licence in r.reason
    specialist_flags = [r.specialist for r in recs]
    assert specialist_flags == sorted(specialist_flags, reverse=True)  # specialists first


@settings(max_examples=25, deadline=None)
@given(task=st.sampled_from(catalog.TASKS), small=st.floats(1, 100), extra=st.floats(0, 100))
def test_more_vram_never_removes_a_candidate(task, small, extra):
    fewer = {r.model.id for r in catalog.recommend(task, small, top=None)}
    more = {r.model.id for r in catalog.recommend(task, small + extra, top=None)}
    assert fewer <= more


def test_recommend_examples():
    code = catalog.recommend("code", 12, licence="permissive")
    assert code and code[0].specialist and all(r.model.openness != "restricted" for r in code)
    assert [r.model.id for r in catalog.recommend("general", 1, licence="truly-open", top=None)] == ["smollm2-135m"]
    assert catalog.recommend("vision", 1) == []
    assert len(catalog.recommend("general", 80, top=3)) == 3
    long = {r.model.id for r in catalog.recommend("general", 200, context=100_000, top=None)}
    assert "llama-3.1-8b" in long and "gemma-2-9b" not in long  # Gemma 2 reads 8K tokens


@given(vram=st.one_of(st.floats(max_value=0), st.just(float("nan")), st.integers(max_value=0)))
def test_negative_or_zero_vram_is_refused(vram):
    with pytest.raises(LabkitError, match="vram_gb"):
        catalog.recommend("general", vram)


def test_bad_picker_inputs_are_refused_with_the_accepted_values():
    with pytest.raises(LabkitError, match="code"):
        catalog.recommend("poetry", 12)
    with pytest.raises(LabkitError, match="permissive"):
        catalog.recommend("general", 12, licence="free")
    with pytest.raises(LabkitError, match="Q4_K_M"):
        catalog.recommend("general", 12, quant="q3_xs")
    with pytest.raises(LabkitError, match="context"):
        catalog.recommend("general", 12, context=0)
    with pytest.raises(LabkitError, match="top"):
        catalog.recommend("general", 12, top=0)


# ------------------------------------------------------------------ mixture of experts


def test_tiny_moe_matches_the_dense_reference_and_counts_parameters():
    demo = catalog.moe_demo(tokens=50, n_experts=6, top_k=2, d_model=8, d_ff=12)
    assert demo.output_matches_reference
    assert sum(demo.tokens_per_expert) == 50 * 2 and len(demo.tokens_per_expert) == 6
    per_expert = 3 * 8 * 12
    assert demo.params_total == 6 * per_expert + 6 * 8 and demo.params_active == 2 * per_expert + 6 * 8


def test_routing_keeps_the_k_best_experts_with_weights_summing_to_one():
    import torch

    hidden = torch.randn(5, 4)
    router = torch.randn(3, 4)
    weights, idx = catalog.route_tokens(hidden, router, 2)
    assert torch.allclose(weights.sum(-1), torch.ones(5))
    assert (idx == (hidden @ router.T).topk(2, dim=-1).indices).all()
    with pytest.raises(LabkitError, match="top_k"):
        catalog.route_tokens(hidden, router, 4)
    with pytest.raises(LabkitError, match="top_k"):
        catalog.tiny_moe(n_experts=4, top_k=0)


# ------------------------------------------------------------------ plots, cards, the Hub


def test_plots_draw_one_mark_per_model():
    import matplotlib

    matplotlib.use("Agg")
    fig = catalog.plot_kv_bytes_per_token()
    assert len(fig.axes[0].patches) == len(SHIPPED)
    fig = catalog.plot_moe_total_vs_active()
    assert len(fig.axes[0].patches) == 2 * len(catalog.find_models(architecture="moe"))
    fig = catalog.plot_params_vs_context()
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(catalog.load_catalog())
    assert len(catalog.plot_expert_load(catalog.moe_demo()).axes[0].patches) == 8


def test_card_metadata_reads_the_front_matter():
    card = "---\nlicense: apache-2.0\nbase_model: Qwen/Qwen2.5-7B\ntags: [chat]\n---\n# My model\n"
    assert catalog.card_metadata(card) == {"license": "apache-2.0", "base_model": "Qwen/Qwen2.5-7B", "tags": ["chat"]}
    with pytest.raises(LabkitError, match="---"):
        catalog.card_metadata("# A card without metadata")


def test_hub_access_says_it_is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabkitError, match="offline"):
        catalog.hub_search("Qwen2.5")
    with pytest.raises(LabkitError, match="offline"):
        catalog.hub_model_card("Qwen/Qwen2.5-7B")


# ------------------------------------------------------------------ exercises


def test_exercises_pass_on_the_right_answer_and_fail_with_the_hint():
    check("01.kv_bytes_per_token", 2 * 32 * 8 * 128 * 2, config="llama-3.1-8b")
    with pytest.raises(AssertionError, match="num_key_value_heads"):
        check("01.kv_bytes_per_token", 2 * 32 * 32 * 128 * 2, config="llama-3.1-8b")  # used the query heads
    active = catalog.count_parameters("mixtral-8x7b").active
    check("01.moe_active_params", active, config="mixtral-8x7b")
    with pytest.raises(AssertionError, match="experts"):
        check("01.moe_active_params", catalog.count_parameters("mixtral-8x7b").total, config="mixtral-8x7b")
    check("01.embedding_share", 262144 * 640 / 268_098_176, config="gemma-3-270m")
    with pytest.raises(AssertionError, match="vocab_size × hidden_size"):
        check("01.embedding_share", 2 * 262144 * 640 / 268_098_176, config="gemma-3-270m")  # counted the tie twice


def test_pick_model_validator_explains_what_is_wrong():
    check("01.pick_model", "qwen2.5-coder-7b", task="code", vram_gb=12, licence="commercial")
    for answer, reason in [("gemma-2-9b", "not made for 'code'"), ("qwen2.5-coder-32b", "GiB"),
                           ("codestral-22b", "licence"), ("gpt-4", "not a catalog id"), (7, "string")]:
        with pytest.raises(AssertionError, match=reason):
            check("01.pick_model", answer, task="code", vram_gb=12, licence="commercial")
    with pytest.raises(AssertionError, match="tokens"):
        check("01.pick_model", "codegemma-7b", task="code", vram_gb=24, context=16384)


def test_weights_estimate_is_close_to_the_seeds_rule_of_thumb():
    # "A 7-billion parameter model can require >14GB of VRAM even before processing any input" (fp16)
    est = catalog.estimate_memory("mistral-7b-v0.3", quant="fp16", overhead_gib=0)
    assert est.weights / 1e9 > 14
    assert math.isclose(est.weights, catalog.count_parameters("mistral-7b-v0.3").total * 2)
