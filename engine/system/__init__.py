"""This PC, for `python -m engine doctor` (engine/system_doctor.py, which puts the two together): what it is
(facts.py: Python, torch, nvidia-smi, bitsandbytes, RAM, disks, Windows settings, as plain data) and whether it can
train (checks.py: one pure check per topic, facts -> findings in the user's words), kept apart so tests judge fake PCs.
Stdlib at import: torch, bitsandbytes, psutil and winreg are imported inside the functions that ask them.

May import: nothing of the engine (tools/torch_build.py, which install.bat runs before anything is installed,
imports it through engine.system_doctor).
"""
