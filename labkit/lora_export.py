"""Shipping a fine-tune to llama.cpp, Ollama and LM Studio: the merged weights as a GGUF file, with llama.cpp's
tensor names, Gemma's norms stored plus one, and what a server needs to chat with it and stop after its answer
(the chat template and the end-of-turn token as end of sequence). Then one chat request to it through llama.cpp's
OpenAI-compatible server, using the template stored in the file, as Ollama and LM Studio would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LabkitError
from .gguf_files import write_gguf_like
from .lora import END_OF_TURN, GEMMA_CHAT_TEMPLATE
from .models import bundled_gguf_path

# numpy, gguf and the llama.cpp server are imported inside the functions that use them.

NORM_SUFFIXES = ("_norm.weight", "layernorm.weight", "norm.weight")
GEMMA3_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
}
GEMMA3_LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name llama.cpp uses for a Gemma 3 transformers weight (None: not stored, e.g. the tied
    lm_head)."""
    if hf_name in GEMMA3_TO_GGUF:
        return GEMMA3_TO_GGUF[hf_name]
    if hf_name == "lm_head.weight":
        return None
    parts = hf_name.split(".")
    if hf_name.startswith("model.layers.") and ".".join(parts[3:]) in GEMMA3_LAYER_TO_GGUF:
        return f"blk.{parts[2]}.{GEMMA3_LAYER_TO_GGUF['.'.join(parts[3:])]}"
    raise LabkitError(f"no GGUF name for the weight {hf_name!r}: only Gemma 3 models export here.")


def to_gguf_tensors(state_dict: dict) -> dict:
    """The merged model's weights as llama.cpp stores them: GGUF names, numpy arrays, and Gemma's norm weights
    plus one (transformers' Gemma RMSNorm multiplies by 1 + w; llama.cpp's by the stored value)."""
    import numpy as np

    out = {}
    for name, tensor in state_dict.items():
        target = gguf_name(name)
        if target is None:
            continue
        array = tensor.detach().float().cpu().numpy()
        if "norm" in target:
            out[target] = (array + 1.0).astype(np.float32)  # llama.cpp keeps norms in float32
        else:
            out[target] = array.astype(np.float16)
    return out


def token_id_in_gguf(path: str | Path, token: str) -> int:
    """The id of `token` in a GGUF file's own vocabulary (tokenizer.ggml.tokens)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    for i, index in enumerate(field.data):
        if bytes(field.parts[index]).decode("utf-8") == token:
            return i
    raise LabkitError(f"{Path(path).name} has no token {token!r} in its vocabulary")


def export_gguf(merged_model: Any, out_path: str | Path, template: str | Path | None = None,
                chat_template: str | None = GEMMA_CHAT_TEMPLATE, end_token: str | None = END_OF_TURN) -> Path:
    """Write the merged model as an F16 GGUF that llama.cpp, Ollama and LM Studio load: metadata and tokenizer
    copied from `template` (default: the bundled GGUF), the tensors from the merged weights.

    The file also carries what a server needs to chat with the fine-tune and stop after its answer: the chat
    template it was trained with (`tokenizer.chat_template`, which llama.cpp's server, Ollama and LM Studio read)
    and, as end-of-sequence token, the `end_token` it learned to emit after each answer (the base model's own EOS
    never follows an answer). Pass None to either to keep the template's."""
    template = Path(template) if template is not None else bundled_gguf_path()
    tensors = to_gguf_tensors(merged_model.state_dict())
    metadata: dict[str, Any] = {"general.name": f"{Path(out_path).stem} (LoRA merged)"}
    if chat_template:
        metadata["tokenizer.chat_template"] = chat_template
    if end_token:
        metadata["tokenizer.ggml.eos_token_id"] = token_id_in_gguf(template, end_token)
    return write_gguf_like(template, tensors, out_path, dtype="F16", progress=False, metadata=metadata)


@dataclass
class ServedAnswer:
    text: str
    finish_reason: str  # "stop": the model ended its answer; "length": cut off at max_tokens
    completion_tokens: int


def served_answer(gguf_path: str | Path, request: str, max_tokens: int = 64) -> ServedAnswer:
    """Serve a GGUF file with llama.cpp's OpenAI-compatible server, using the chat template stored IN the file (as
    Ollama and LM Studio do), and ask one chat question greedily."""
    from .runtimes import LlamaServer

    with LlamaServer(gguf_path, chat_format=None) as server:
        reply = server.client().chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": request}], max_tokens=max_tokens,
            temperature=0)
    choice = reply.choices[0]
    return ServedAnswer(choice.message.content or "", choice.finish_reason, reply.usage.completion_tokens)
