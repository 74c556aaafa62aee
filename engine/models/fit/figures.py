"""The fixed figures of "will it fit": bytes per dtype and per trained parameter, and what sits beside the model.

GB means 2**30 bytes here, as Windows Task Manager and the system doctor count. The figures a family measured (its
activations, its real models' sizes) are in its own folder: engine/models/families/<folder>/memory.py.
"""
from __future__ import annotations

GB = 2**30
MARGIN = 0.15                 # the stated uncertainty of the estimate
PROCESS_RAM_GB = 3.0          # Python + PyTorch + the CUDA runtime libraries, resident in RAM
CUDA_CONTEXT_GB = 0.6         # CUDA context + cuBLAS workspace: on the card, outside PyTorch's allocator
ALLOCATOR_SLACK = 0.07        # reserved minus allocated at the peak (the caching allocator's fragmentation)
CAPTION_CHUNK, ENCODER_LIVE_STATES = 16, 8   # captions encoded at a time; states of the text width alive at the peak
# model.text_encoder_fp8: the share of a text encoder's parameters in its Linear layers, which store_in_fp8 keeps
# in 1 byte (the token embedding and the norms stay): Qwen3-4B 0.90, T5-XXL 0.97, CLIP-L 0.69 (their configs)
TE_FP8_SHARE = 0.9
VAE_ENCODE_GB_PER_MPX = 1.5   # VAE encoder activations per megapixel in bf16 (no gradients); doubled in fp32

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Bytes of optimizer state per trained parameter: bitsandbytes' 8-bit states are 1 byte each; Prodigy keeps
# exp_avg, exp_avg_sq, s and the initial weights; Adafactor's factored second moment is rows + cols per matrix,
# under 0.5 B per LoRA parameter; SGD keeps a momentum buffer only with momentum > 0.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "lion": 4, "lion8bit": 1, "sgd": 0, "prodigy": 16,
                         "adafactor": 0.5}
EIGHT_BIT = {"adamw": "adamw8bit", "lion": "lion8bit"}
TRAINED_BYTES = 4 + 4 + 2     # fp32 weight + fp32 gradient + the bf16 copy autocast keeps during the step
RESOLUTIONS_PX = (1024, 768, 512, 384, 256)   # what the resolution saver offers, below the preset's
