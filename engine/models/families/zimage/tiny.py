"""The tiny Z-Image pipeline (engine/models/tiny.py's build_tiny): a 2-layer Qwen3 text encoder over a byte-level
BPE tokenizer with a chat template (the pipeline wraps each caption in one), one main layer and one refiner layer of
each kind, and a VAE with FLUX.1's AE shift and scale (4 latent channels here; the real AE has 16)."""
from __future__ import annotations

from engine.models.tiny_parts import _bytes_to_unicode, tiny_vae

QWEN_WIDTH = 32  # the text states' width (the real Qwen3-4B: 2560)

# Qwen3's chat markup, reduced to what ZImagePipeline asks of it: one user turn, then the assistant's turn opened
# (with enable_thinking, as the pipeline calls it, an empty thinking block as Qwen3's template writes)
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
_MERGES = [("t", "h"), ("th", "e"), ("a", "n"), ("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]


def tiny_qwen_tokenizer():
    """A Qwen2Tokenizer over the byte alphabet plus a few merges and Qwen's special tokens, built in memory."""
    from transformers import Qwen2Tokenizer

    tokens = list(_bytes_to_unicode().values()) + ["".join(m) for m in _MERGES]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=512)
    tokenizer.add_special_tokens({"additional_special_tokens": list(_SPECIAL[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def zimage():
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tiny_qwen_tokenizer()
    text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=QWEN_WIDTH, intermediate_size=48,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=8, max_position_embeddings=512,
                                          pad_token_id=tokenizer.pad_token_id))
    latent_channels = 4
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=latent_channels, dim=64, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=QWEN_WIDTH, axes_dims=[8, 12, 12],
        axes_lens=[256, 64, 64])  # sum(axes_dims) = the head width (64 / 2)
    vae = tiny_vae(latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
                   shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


BUILDERS = {"zimage": zimage}
