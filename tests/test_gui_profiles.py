"""The Training tab's profile buttons come from the FLUX identity preset files: one table of the guide's numbers."""
from __future__ import annotations

import shutil

import pytest

gr = pytest.importorskip("gradio")

from engine.config.fields import get_value  # noqa: E402
from engine.config.load import load_preset  # noqa: E402
from ui import tab_training  # noqa: E402
from ui.fields import Form  # noqa: E402


def test_each_flux_identity_preset_is_a_profile_with_its_files_values():
    profiles = tab_training.load_profiles()
    assert list(profiles) == ["fast", "final"]  # the shorter run first
    for name, values in profiles.items():
        preset = load_preset(tab_training.PRESETS_DIR / f"flux-identity-{name}.yaml")
        assert values == {key: get_value(preset, key) for key in tab_training.PROFILE_KEYS}
    # the guide's numbers, as the user sees them on the buttons' help
    assert profiles["fast"]["training.max_steps"] == 1500 and profiles["final"]["network.rank"] == 64
    help_text = tab_training.profile_help(profiles)
    assert "**fast**: 512 px, 1500 steps, rank 32" in help_text and "min-SNR 5" in help_text


def test_editing_a_preset_file_changes_its_profile(tmp_path):
    for path in tab_training.PRESETS_DIR.glob("flux-identity-*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    final = tmp_path / "flux-identity-final.yaml"
    final.write_text(final.read_text(encoding="utf-8").replace("rank: 64", "rank: 48"), encoding="utf-8")
    shutil.copy(tmp_path / "flux-identity-fast.yaml", tmp_path / "flux-identity-medium.yaml")
    profiles = tab_training.load_profiles(tmp_path)
    assert profiles["final"]["network.rank"] == 48
    assert set(profiles) == {"fast", "medium", "final"}
    assert "**medium**: 512 px" in tab_training.profile_help(profiles)


def test_a_profile_button_sets_only_its_keys():
    with gr.Blocks():
        form = Form()
        for section in ("model", "dataset", "network", "training", "optimizers", "schedules", "sampling", "output"):
            form.section(section)
    updates = tab_training.profile_updates(form, "final")
    keys = {key for key, widget in form.widgets.items() if widget in updates}
    assert keys == set(tab_training.PROFILE_KEYS)
    assert "model.path" not in keys and "dataset.path" not in keys
