"""labkit.flash_options: every FlashAttention switch of the course's runtimes, checked on this machine, and llama.cpp's
compute buffer with and without it."""

import pytest

from labkit import flash_options


def test_every_switch_says_what_it_needs_and_whether_it_runs_here():
    options = flash_options.options_here()
    switches = [o.switch for o in options]
    assert any("-fa on" in s for s in switches) and any("flash_attention_2" in s for s in switches)
    assert any("sdpa_kernel(SDPBackend.FLASH_ATTENTION)" in s for s in switches)
    for o in options:
        assert o.needs and o.why and o.row()["here"].startswith("✅" if o.here else "❌")
    fa2 = next(o for o in options if "flash_attention_2" in o.switch)
    assert "8.0" in fa2.needs and "flash-attn" in fa2.needs


def test_flash_attention_2_is_refused_without_an_ampere_gpu(monkeypatch):
    monkeypatch.setattr(flash_options, "_gpu_capability", lambda: None)
    fa2 = next(o for o in flash_options.options_here() if "flash_attention_2" in o.switch)
    assert not fa2.here and "no NVIDIA GPU here" in fa2.why


def test_llama_cpp_buffers_are_read_from_its_log():
    pytest.importorskip("llama_cpp")
    off, on = flash_options.llama_cpp_flash_buffers(n_ctx=1024, prompt_tokens=32)
    assert (off.flash_attn, on.flash_attn) == (False, True)
    assert off.compute_bytes > 0 and on.compute_bytes > 0 and off.prompt_tokens == on.prompt_tokens == 32
    text = flash_options.flash_buffers_markdown((off, on), vocab_size=262144)
    assert f"{off.compute_bytes / 2**20:.1f} MiB" in text


def test_the_markdown_says_when_the_buffer_did_not_change():
    same = (flash_options.FlashBuffers(False, 4096, 512 * 2**20, 128, 2.0),
            flash_options.FlashBuffers(True, 4096, 512 * 2**20, 128, 2.5))
    text = flash_options.flash_buffers_markdown(same, vocab_size=262144)
    assert "No difference in memory here" in text and "512 MiB" in text and "not faster" in text
    saved = (flash_options.FlashBuffers(False, 32768, 900 * 2**20, 128, 3.0),
             flash_options.FlashBuffers(True, 32768, 600 * 2**20, 128, 1.0))
    text = flash_options.flash_buffers_markdown(saved, vocab_size=32000)
    assert "saved 300.0 MiB" in text and "also faster" in text
