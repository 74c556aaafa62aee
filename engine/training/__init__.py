"""Training: the loop (loop.py, reads top to bottom), run set-up (setup.py), objectives (objectives.py),
optimizers and LR schedules per component (optimizers.py; schedules.py is torch-free for the LR preview),
checkpoints and exact resume (checkpoints.py).

May import: sampling, models, data, config, the helpers.
"""
