"""Build a tiny DiffusionGemma with random weights and a byte-level tokenizer, in Hugging Face layout.

Tests and the demo use it until a trained demo model ships. It knows nothing of the service.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    DiffusionGemmaConfig,
    DiffusionGemmaForBlockDiffusion,
    DiffusionGemmaTextConfig,
    Gemma4VisionConfig,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # 262: exactly the tokenizer, so every id decodes

# A Gemma-style template: the API renders it with Jinja (no transformers there), the worker with HF.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: every byte is one token, specials first (pad 0, eos 1, bos 2)."""
    byte_symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in byte_symbols:
        vocab[sym] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_config(
    canvas_length: int = 32, max_positions: int = 1024, hidden: int = 64, layers: int = 2
) -> DiffusionGemmaConfig:
    """A config small enough for CPU tests: 2 layers (sliding, full, ...), hidden 64, 4 experts."""
    text = DiffusionGemmaTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=1,
        head_dim=32,
        num_global_key_value_heads=1,
        global_head_dim=32,
        sliding_window=64,
        max_position_embeddings=max_positions,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=hidden // 2,
        final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["full_attention"] * (layers % 2),
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    # vision_config=None still builds a default 170M-parameter tower (reference digest 6.7): make it tiny.
    vision = Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        position_embedding_size=64,
    )
    return DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length)


def make_tiny(directory: Path, *, seed: int = 0, canvas_length: int = 32, hidden: int = 64) -> Path:
    """Write a tiny random DiffusionGemma (config, weights, tokenizer, generation config) to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(tiny_config(canvas_length, hidden=hidden)).eval()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = EOS_ID, PAD_ID, BOS_ID
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    card = {"name": directory.name, "made_by": "canvas models make-tiny", "seed": seed, "weights": "random"}
    (directory / "canvas_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return directory
