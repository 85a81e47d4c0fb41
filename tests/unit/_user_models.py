"""Models as users bring them: Hugging Face ``transformers`` built from tiny configs (random weights, no
downloads) and stock ``torch.nn``. Each factory returns ``(model, example_kwargs)`` for ``splitinfer divide``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["bert", "gpt2", "padded_encoder", "t5_encoder", "vit"]


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def bert() -> tuple[nn.Module, dict[str, Any]]:
    """A BERT-style encoder: token type ids, an attention mask with padding, a pooler; output a dataclass."""
    from transformers import BertConfig, BertModel

    _quiet()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16,
    )  # fmt: skip
    mask = torch.ones(1, 8, dtype=torch.long)
    mask[0, 6:] = 0
    return BertModel(config).eval(), {"input_ids": torch.randint(0, 64, (1, 8)), "attention_mask": mask}


def gpt2() -> tuple[nn.Module, dict[str, Any]]:
    """GPT-2 with its language-model head tied to the token embedding (one weight, two readers)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet()
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=16, use_cache=False, bos_token_id=0,
        eos_token_id=0, tie_word_embeddings=True,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    return model, {"input_ids": torch.randint(0, 64, (1, 8))}


def vit() -> tuple[nn.Module, dict[str, Any]]:
    """A ViT on 16x16 images in 4x4 patches."""
    from transformers import ViTConfig, ViTModel

    _quiet()
    torch.manual_seed(2)
    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    return ViTModel(config).eval(), {"pixel_values": torch.randn(1, 3, 16, 16)}


def t5_encoder() -> tuple[nn.Module, dict[str, Any]]:
    """A T5 encoder: relative position bias computed once and read by every layer."""
    from transformers import T5Config, T5EncoderModel

    _quiet()
    torch.manual_seed(3)
    config = T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=3, num_heads=2)
    return T5EncoderModel(config).eval(), {"input_ids": torch.randint(0, 64, (1, 8))}


def padded_encoder() -> tuple[nn.Module, dict[str, Any]]:
    """``torch.nn.TransformerEncoder`` with a key padding mask (the last two tokens are padding)."""
    torch.manual_seed(4)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=2, dim_feedforward=64, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 6:] = True
    return model, {"src": torch.randn(1, 8, 32), "src_key_padding_mask": mask}
