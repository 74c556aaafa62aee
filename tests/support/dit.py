"""The tiny DiT the tests train: 2 blocks of width 64 on 32 px pixels (8 x 8 patches of 4 px), a few MB, a step in
a fraction of a second on a CPU; presets/dit-flow-matching.yaml is the preset it shrinks."""
from engine.runs import PROJECT_ROOT

DIT_PRESET = PROJECT_ROOT / "presets" / "dit-flow-matching.yaml"
TINY_DIT_PX = 32
TINY_DIT = ["model.dit.depth=2", "model.dit.width=64", "model.dit.heads=2", "model.dit.patch_size=4",
            f"dataset.resolution_px={TINY_DIT_PX}"]
# a short run of it: batch 8, a learning rate that shows in a few steps, no samples and no checkpoints on the way
TINY_DIT_RUN = [*TINY_DIT, "training.batch_size=8", "optimizers.unet.lr=1e-3", "output.save_every_n_steps=0",
                "sampling.prompts=[]"]
