"""Training: the loop (loop.py, reads top to bottom, knows no mode) and the modes it trains as phases (modes/:
the denoiser's LoRA / full fine-tune, the VAE, reflow; RL's is engine/rl/mode.py), chosen by the preset.

    setup.py            a denoiser's run set up top to bottom, on the Run record (run_state.py)
    precision.py network.py placement.py batch_size.py disk_space.py optimizer_setup.py
                        its steps: device and precision, LoRA / full network, where the model's parts are,
                        training.auto_batch_size, free disk, the accelerator and the optimizer set
    resume.py           the resume state both ways (exact resume); checkpoints.py its files, EMA, RNG
    console.py          engine.log's human lines; tensorboard_sink.py the TensorBoard logs
    objectives.py paths.py optimizers.py schedules.py (torch-free, for the LR preview) validation.py speed.py
    distributed.py      several GPUs through accelerate launch

May import: sampling, models, data, config, the helpers.
"""
