"""training.precision auto: fp32 on the CPU without a warning, bf16 on cards that have it natively, fp16 on older
cards, and FLUX always bf16 (fp16 overflows it)."""
import torch

from engine.config.schema import NetworkConfig, Preset, TrainingConfig
from engine.training import precision
from engine.models.families import capabilities
from engine.training.precision import choose_precision, resolved_precision


class Events:
    def __init__(self):
        self.seen = []

    def emit(self, kind, **fields):
        self.seen.append((kind, fields))


def test_a_new_preset_is_auto():
    assert Preset().training.precision == "auto"


def test_auto_follows_the_card_and_explicit_choices_stay():
    assert resolved_precision("auto", bf16_native=True) == "bf16"
    assert resolved_precision("auto", bf16_native=False) == "fp16"
    assert resolved_precision("auto", bf16_native=False, default_precision=capabilities("flux").default_precision) == "bf16"
    assert resolved_precision("fp16", bf16_native=True) == "fp16"
    assert resolved_precision("fp32", bf16_native=True) == "fp32"


def test_on_the_cpu_auto_is_fp32_without_a_warning_and_bf16_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    events = Events()
    assert choose_precision(TrainingConfig(precision="auto"), NetworkConfig(), events) == ("cpu", "no", torch.float32)
    assert not [e for e in events.seen if e[0] == "warning"]
    choose_precision(TrainingConfig(precision="bf16"), NetworkConfig(), events)
    assert any("training.precision bf16 needs a GPU" in f["message"] for k, f in events.seen if k == "warning")


def test_on_an_older_card_auto_trains_in_fp16_and_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated: torch says yes
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))  # an RTX 20xx
    monkeypatch.setattr(precision, "enable_tf32", lambda: None)
    events = Events()
    device, mixed, dtype = choose_precision(TrainingConfig(precision="auto"), NetworkConfig(), events)
    assert (device, mixed, dtype) == ("cuda", "fp16", torch.float16)
    assert any("auto: fp16" in f.get("text", "") for _, f in events.seen)
    assert choose_precision(TrainingConfig(precision="auto"), NetworkConfig(), events, capabilities("flux").default_precision)[1] == "bf16"
    # a full fine-tune keeps fp32 master weights whatever the mixed precision
    assert choose_precision(TrainingConfig(precision="auto"), NetworkConfig(type="full"), events)[2] == torch.float32
