"""Training modes as phases (DESIGN.md Layout: training/modes/). Each mode says what differs through one small
interface (phase.py: Mode, Phase, Loop); registry.py chooses the mode by training.mode and training.reflow_steps.

    phase.py             the interface: Mode (set-up + phases), Phase (what differs), Loop (what a phase calls)
    registry.py          MODES and mode_for(training, more): the modes of training/, plus those an entry point adds
    denoiser.py          LoRA / full fine-tune of the denoiser: its loss, files, validation loss; denoiser_samples.py
    vae.py               training.mode vae: the VAE (+ a discriminator), its losses, reconstructions and files
    reflow.py            reflow's iterations after the denoiser's phase (training.reflow_steps > 0)
RL (training.mode rl: a warmup, then RL epochs) is engine/rl/mode.py: rl imports training, never the other way
round, so engine/cli.py hands it to engine.training.loop.run as one more registry entry.
"""
