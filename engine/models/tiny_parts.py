"""The small pieces every tiny family model is built from (engine/models/tiny.py; each family's builder is its
folder's tiny.py): tokenizers built in memory, a CLIP text config and a VAE of the real structure at a few KB.

Offline and deterministic: nothing is downloaded; the weights come from the global RNG that build_tiny seeds."""
from __future__ import annotations

import string

# A few BPE merges so that common words are single tokens; the rest falls back to characters.
_CLIP_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "n</w>"), ("i", "n"), ("in", "g</w>"),
                ("c", "a"), ("ca", "t</w>")]
CLIP_HIDDEN = 32  # CLIP text width; also FLUX's pooled_projection_dim


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable-unicode alphabet (256 characters), so any UTF-8 text tokenizes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def tiny_clip_tokenizer():
    """A CLIPTokenizer over the byte alphabet plus a few merges (about 530 tokens), built in memory."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in _CLIP_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    # transformers 5: merges must be tuples, not "a b" strings.
    return CLIPTokenizer(vocab=vocab, merges=list(_CLIP_MERGES), model_max_length=77, bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_t5_tokenizer():
    """A Unigram T5Tokenizer over lowercase letters, digits and two words, built in memory."""
    from transformers import T5Tokenizer

    letters = string.ascii_lowercase
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + c, -3.0) for c in letters]
    pieces += [(c, -4.0) for c in letters + "0123456789.,!?'-"] + [("▁the", -1.0), ("▁cat", -1.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_config(tokenizer, hidden: int = CLIP_HIDDEN):
    """A 2-layer CLIPTextConfig of width `hidden` over `tokenizer`'s vocabulary and special tokens."""
    from transformers import CLIPTextConfig

    vocab = tokenizer.get_vocab()
    return CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, projection_dim=hidden,
                          bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                          pad_token_id=vocab["<|endoftext|>"])


def tiny_vae(**overrides):
    """4 levels -> vae_scale_factor 8, as in every real SD/SDXL/FLUX VAE, so 64 px images give 8x8 latents."""
    from diffusers import AutoencoderKL

    config = dict(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32), layers_per_block=1,
                  norm_num_groups=8, sample_size=64)
    return AutoencoderKL(**{**config, **overrides})
