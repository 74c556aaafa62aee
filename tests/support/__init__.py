"""What many test files share, so that each says it once (issue 24): the tiny DiT settings (dit.py), training a
preset in this process and reading its events (runs.py), the tiny models built once per session (models.py, behind
the fixtures in tests/conftest.py), a reward server on 127.0.0.1 (reward_server.py) and a fake nvidia-smi
(nvidia_smi.py). Imported by bare name like the other helpers (conftest.py puts tests/ on sys.path):

    from support.runs import train_run
"""
