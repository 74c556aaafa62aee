"""engine/lr_preview.py: the preview shows the LR the trainer will use, step by step, and draws it."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from engine.config.load import ConfigError, preset_from_dict
from engine.lr_preview import cli, lr_curves, lr_figure, lr_marks, read_csv
from tests.dataset_factory import make_clean_dataset

ROOT = Path(__file__).resolve().parents[1]

# The FLUX identity guide's final profile: LR 1e-4, cosine, 500 warmup steps, 2500 steps.
FLUX_FINAL = {
    "model": {"family": "flux"},
    "dataset": {"resolution_px": 768, "min_bucket_px": 384, "max_bucket_px": 1024},
    "network": {"rank": 64, "alpha": 64, "dropout": 0.1},
    "training": {"max_steps": 2500, "noise_offset": 0.1, "min_snr_gamma": 5.0},
    "optimizers": {"unet": {"type": "adamw", "lr": 1e-4}},
    "schedules": {"unet": {"type": "cosine", "warmup_steps": 500}},
    "sampling": {"prompts": ["ohwx, portrait photo"], "every_n_steps": 250},
    "output": {"formats": ["diffusers"], "save_every_n_steps": 500},
}


def with_te(data: dict, **network) -> dict:
    out = yaml.safe_load(yaml.safe_dump(data))
    out["network"].update({"train_text_encoder": True, **network})
    out["schedules"]["text_encoder"] = {"type": "cosine", "warmup_steps": 500}
    return out


def test_flux_final_profile_curve():
    curves = lr_curves(preset_from_dict(FLUX_FINAL))
    unet = curves["unet"]
    assert list(curves) == ["unet"] and len(unet) == 2500
    assert unet[0] == 0.0 and unet[250] == pytest.approx(5e-5) and unet[500] == pytest.approx(1e-4)
    assert unet[1500] == pytest.approx(5e-5)  # halfway through the cosine
    assert unet[-1] < 1e-9 and all(a >= b for a, b in zip(unet[500:], unet[501:]))


def test_preview_equals_what_the_trainer_steps():
    """Same numbers as build_optimizers' lrs() over a whole run, text encoder and two-phase cut-off included."""
    torch = pytest.importorskip("torch")
    from engine.training.optimizers import build_optimizers
    from engine.training.schedules import two_phase_cutoff

    data = with_te(FLUX_FINAL, te_two_phase=True, te_phase_fraction=0.4)
    data["training"]["max_steps"] = 300
    data["optimizers"] = {"unet": {"type": "sgd", "lr": 1e-4}, "text_encoder": {"type": "sgd", "lr": None}}  # fast steps
    data["schedules"] = {"unet": {"type": "CosineAnnealingLR", "warmup_steps": 30, "eta_min_factor": 0.1},
                         "text_encoder": {"type": "cosine", "warmup_steps": 10}}
    p = preset_from_dict(data)
    params = {c: [torch.nn.Parameter(torch.zeros(4))] for c in ("unet", "text_encoder")}
    optim_set = build_optimizers(p.optimizers, p.schedules, params, 300, p.network.te_lr_ratio,
                                 two_phase_cutoff(p.network, 300))
    stepped = {c: [] for c in params}
    for _ in range(300):
        optim_set.step()
        for c, lr in optim_set.lrs().items():
            stepped[c].append(lr)
    assert lr_curves(p) == stepped
    assert stepped["text_encoder"][119] > 0 and stepped["text_encoder"][120:] == [0.0] * 180


def test_text_encoder_curve_is_0_4_of_the_unet_curve():
    curves = lr_curves(preset_from_dict(with_te(FLUX_FINAL)))
    assert set(curves) == {"unet", "text_encoder"}
    for u, t in zip(curves["unet"], curves["text_encoder"]):
        assert t == pytest.approx(0.4 * u)


def test_marks_are_the_checkpoint_and_sample_steps():
    marks = lr_marks(preset_from_dict(FLUX_FINAL), 2500)
    assert marks["checkpoint"] == [500, 1000, 1500, 2000, 2500]
    assert marks["sample"] == list(range(250, 2501, 250))


def test_run_length_from_epochs_uses_the_dataset(tmp_path):
    make_clean_dataset(tmp_path / "my data ü", n=6)
    data = {"dataset": {"path": str(tmp_path / "my data ü")}, "training": {"max_steps": 0, "max_epochs": 3}}
    curves = lr_curves(preset_from_dict(data))
    assert len(curves["unet"]) == 18  # 6 images x 1 repeat, batch 1, 3 epochs


def test_run_length_unknown_is_a_clear_error(tmp_path):
    data = {"dataset": {"path": str(tmp_path / "empty")}, "training": {"max_steps": 0, "max_epochs": 3}}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="set training.max_steps"):
        lr_curves(preset_from_dict(data))


def test_cli_writes_png_and_csv_in_a_folder_with_spaces_and_accents(tmp_path, capsys):
    folder = tmp_path / "vorschau ü"
    folder.mkdir()
    preset_file = folder / "flux final.yaml"
    preset_file.write_text(yaml.safe_dump(with_te(FLUX_FINAL), allow_unicode=True), encoding="utf-8")
    assert cli([str(preset_file), "--out", str(folder / "lr.png"), "--csv", str(folder / "lr.csv")]) == 0
    with Image.open(folder / "lr.png") as im:
        assert im.size[0] > 600 and im.size[1] > 300
    rows = read_csv(folder / "lr.csv")
    assert rows == lr_curves(preset_from_dict(with_te(FLUX_FINAL)))
    assert "unet: peak 0.0001" in capsys.readouterr().out


def test_cli_bad_preset_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedules:\n  unet: {type: cosine, eta_min_factor: 0.1}\n", encoding="utf-8")
    assert cli([str(bad), "--out", str(tmp_path / "lr.png")]) == 2
    err = capsys.readouterr().err
    assert "schedules.unet.eta_min_factor" in err and "num_cycles" in err
    assert not (tmp_path / "lr.png").exists()


def test_cli_set_override_and_steps(tmp_path):
    preset_file = tmp_path / "p.yaml"
    preset_file.write_text(yaml.safe_dump(FLUX_FINAL), encoding="utf-8")
    assert cli([str(preset_file), "--csv", str(tmp_path / "lr.csv"), "--steps", "100",
                "--set", "schedules.unet.type=ExponentialLR", "--set", "schedules.unet.warmup_steps=0"]) == 0
    unet = read_csv(tmp_path / "lr.csv")["unet"]
    assert len(unet) == 100 and unet[10] == pytest.approx(1e-4 * 0.95 ** 10)


def test_gui_side_needs_no_torch(tmp_path):
    """The GUI process imports this module; torch must not come with it (curves and the figure included)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from engine.config.load import preset_from_dict\n"
        "from engine.lr_preview import lr_curves, lr_figure, lr_marks\n"
        f"p = preset_from_dict({FLUX_FINAL!r})\n"
        "c = lr_curves(p); lr_figure(c, lr_marks(p, 2500)).savefig(sys.argv[1])\n"
    )
    out = tmp_path / "gui.png"
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 10_000


def test_figure_has_one_line_per_component_and_the_marks():
    p = preset_from_dict(with_te(FLUX_FINAL))
    fig = lr_figure(lr_curves(p), lr_marks(p, 2500))
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["unet (peak 0.0001)", "text_encoder (peak 4e-05)"]
    assert "checkpoint" in labels and "sample" in labels
    assert math.isclose(max(ax.lines[0].get_ydata()), 1e-4)
