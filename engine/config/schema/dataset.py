"""dataset and validation: the training images (buckets, augmentation, regularization) and the held-out split."""
from __future__ import annotations

from dataclasses import dataclass

from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class DatasetConfig:
    path: str = opt("", "Folder with your images and captions (images/ + captions/, or side by side).",
                    env="DATA_DIR")
    trigger: str = opt("", "Trigger token that should appear in every caption, e.g. ohwx. Empty: none.")
    caption_ext: str = opt(".txt", "Extension of the caption files.", advanced=True)
    repeats: int = opt(1, "How many times each image is seen per epoch.", min=1, max=1000)
    resolution_px: int = opt(512, "Training resolution: images are bucketed to about this many pixels squared.",
                             unit="px", min=32, max=4096, env="RESOLUTION")
    bucketing: bool = opt(True, "Group images by aspect ratio instead of cropping them square.")
    min_bucket_px: int = opt(256, "Smallest bucket side.", unit="px", min=64, max=4096, advanced=True,
                             env="MIN_BUCKET_RESO")
    max_bucket_px: int = opt(1024, "Largest bucket side.", unit="px", min=64, max=8192, advanced=True,
                             env="MAX_BUCKET_RESO")
    bucket_step_px: int = opt(64, "Bucket sides are multiples of this.", unit="px", min=8, max=256, advanced=True)
    random_crop: bool = opt(False, "Crop at a random position inside the bucket (off: centre crop).", advanced=True)
    flip: bool = opt(False, "Randomly mirror images left-right (not for faces with asymmetric features or text).",
                     advanced=True)
    caption_dropout: float = opt(0.0, "Chance of training an image with an empty caption.", min=0.0, max=1.0,
                                 advanced=True)
    shuffle_tags: bool = opt(False, "Shuffle comma-separated tags every time a caption is used.", advanced=True)
    keep_tags: int = opt(1, "With shuffle_tags: how many leading tags stay in place (the trigger).", min=0,
                         max=100, advanced=True)
    use_reg: bool = opt(False, "Train on regularization images too (keeps the model's idea of the class).",
                        env="USE_REG")
    reg_path: str = opt("", "Folder of regularization images with captions (same layout as the dataset).",
                        env="REG_DIR")
    reg_weight: float = opt(1.0, "Loss weight of regularization images.", min=0.0, max=10.0, advanced=True)
    reg_repeats: int = opt(1, "How many times each regularization image is seen per epoch.", min=1, max=1000,
                           advanced=True)


@dataclass(frozen=True)
class ValidationConfig:
    """A held-out split: its loss on fixed noise and noise levels, comparable across steps, picks the best files."""
    fraction: float = opt(0.0, "Share of the dataset held out for validation (0 = none, unless folder is set).",
                          min=0.0, max=0.5)
    folder: str = opt("", "A separate validation folder (same layout as the dataset); overrides fraction.")
    every_n_steps: int = opt(0, "Validate every N steps (0 = at every checkpoint save and at the end).",
                             unit="steps", min=0, max=10_000_000)
    keep_best: int = opt(3, "Keep the K checkpoints with the lowest validation loss (named with it).", min=0,
                         max=1000)
    seed: int = opt(1234, "Seed of the fixed validation noise and noise levels.", min=0, max=2**32 - 1,
                    advanced=True)
