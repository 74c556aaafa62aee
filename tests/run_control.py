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


def stop_then_resume(run_dir, monkeypatch, step: int) -> None:
    """Train run_dir, press Stop after `step`, then resume it to the end (both must exit 0)."""
    real_report = train.report_step
    stop_at(monkeypatch, step)
    assert train.run(run_dir) == 0
    monkeypatch.setattr(train, "report_step", real_report)
    assert train.run(run_dir, resume=True) == 0
