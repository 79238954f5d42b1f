"""Tiny random-weight models that load through the real code paths, built by the tests themselves.

No model hub is reachable from the test machines, so the tests write their own weights: a 0.5 MB
llama-architecture GGUF text model and a 0.1 MB LLaVA-1.5 ("mlp") vision projector with the `gguf`
package (what it must have: docs/contributing.md), and a few-layer open_clip model. Outputs
are well-formed gibberish: enough to test loading, prompting, parsing and plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

#: Width of the text model; the projector's output rows must equal it.
TEXT_WIDTH = 64

#: A chat template that keeps a message's text and image parts in their order, as most VLMs' do.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message.role }}|>\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_WORDS = ["0", "1", "2", "-1", "Image", "image", "the", "goal", "is", "no", "difference", "better"]


def _vocabulary() -> Tuple[list, list, list]:
    """SentencePiece-style tokens, scores and types: specials, 256 byte tokens, ASCII, a few words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["\u2581"]
    types = [2, 3, 3] + [6] * 256 + [1]
    tokens += [chr(c) for c in range(0x21, 0x7F)]
    types += [1] * (0x7F - 0x21)
    tokens += [f"\u2581{word}" for word in _WORDS]
    types += [1] * len(_WORDS)
    # Longer pieces score higher, so the tokenizer prefers whole words over characters.
    scores = [0.0] * 259 + [float(len(token)) for token in tokens[259:]]
    return tokens, scores, types


def write_text_model(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama-architecture text model with random F32 weights and a chat template."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    n_vocab, width, ffn, blocks = len(tokens), TEXT_WIDTH, 128, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(width)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_rope_dimension_count(width // 4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    tensor("token_embd.weight", n_vocab, width)
    writer.add_tensor("output_norm.weight", np.ones(width, dtype=np.float32))
    tensor("output.weight", n_vocab, width)
    for block in range(blocks):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(width, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(width, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{prefix}.{name}.weight", width, width)
        tensor(f"{prefix}.ffn_gate.weight", ffn, width)
        tensor(f"{prefix}.ffn_up.weight", ffn, width)
        tensor(f"{prefix}.ffn_down.weight", width, ffn)
    _finish(writer)
    return path


def write_projector(path: Path, seed: int = 1) -> Path:
    """A LLaVA-1.5 ("mlp") vision projector: 32 px images, 8 px patches, 16 tokens per image."""
    import gguf

    rng = np.random.default_rng(seed)
    # The feed-forward size must differ from the width, or a legacy check swaps up and down.
    size, patch, width, ffn, blocks = 32, 8, 32, 48, 2
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    # llama.cpp reads these as uint32 and refuses other integer types.
    for key, value in {
        "image_size": size, "patch_size": patch, "embedding_length": width, "feed_forward_length": ffn,
        "projection_dim": TEXT_WIDTH, "attention.head_count": 2, "block_count": blocks,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    def tensor(name: str, *shape: int, dtype=np.float32) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(dtype))

    tensor("v.patch_embd.weight", width, 3, patch, patch, dtype=np.float16)
    tensor("v.class_embd", width)
    tensor("v.position_embd.weight", (size // patch) ** 2 + 1, width)
    tensor("v.pre_ln.weight", width)
    tensor("v.pre_ln.bias", width)
    for block in range(blocks):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"{prefix}.{name}.weight", width, width)
            tensor(f"{prefix}.{name}.bias", width)
        for name in ("ln1", "ln2"):
            tensor(f"{prefix}.{name}.weight", width)
            tensor(f"{prefix}.{name}.bias", width)
        tensor(f"{prefix}.ffn_up.weight", ffn, width)
        tensor(f"{prefix}.ffn_up.bias", ffn)
        tensor(f"{prefix}.ffn_down.weight", width, ffn)
        tensor(f"{prefix}.ffn_down.bias", width)
    tensor("mm.0.weight", TEXT_WIDTH, width)
    tensor("mm.0.bias", TEXT_WIDTH)
    tensor("mm.2.weight", TEXT_WIDTH, TEXT_WIDTH)
    tensor("mm.2.bias", TEXT_WIDTH)
    _finish(writer)
    return path


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_vlm(folder: Path) -> Tuple[Path, Path]:
    """(text model path, projector path) of a tiny VLM written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_model(folder / "tiny-vlm.gguf"), write_projector(folder / "tiny-mmproj.gguf")
