"""Pressing the GUI's buttons from a test: the control files a run acts on at its next step boundary."""
from engine.training import loop as train


def stop_at(monkeypatch, step: int) -> None:
    """The next train.run presses Stop (control/stop) right after `step`; undo with monkeypatch.undo or setattr."""
    real_report = train.report_step

    def press_stop(r, loss, seconds):
        real_report(r, loss, seconds)
        if r.step == step:
            (r.run_dir / "control" / "stop").touch()

    monkeypatch.setattr(train, "report_step", press_stop)
