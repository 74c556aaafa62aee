"""What the dataset doctor reports: findings in the user's words, one row per image for the gallery, and the
report that holds both (plain data: to_dict() for JSON, format_report() for the console)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One problem (or fact) about the dataset, in the user's words. `fix` names a dataset_doctor/fixes.py FIXES key that the
    GUI may offer, to be applied to `fix_files` (paths relative to the dataset folder, '/'-separated)."""

    code: str
    severity: str                  # error | warning | info
    message: str                   # what is wrong and where
    hint: str                      # what to do
    files: list[str] = field(default_factory=list)
    fix: str | None = None
    fix_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageRow:
    """One image for the gallery: where it is, its size (as displayed, after EXIF rotation), bucket and caption."""

    path: str
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    n_bytes: int
    bucket: tuple[int, int] | None
    caption: str | None            # None: no caption file
    codes: list[str] = field(default_factory=list)   # the findings that concern this image

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    root: str
    layout: str
    settings: dict
    findings: list[Finding]
    images: list[ImageRow]
    buckets: dict[str, int]        # "832x1216" -> number of images
    seconds: float

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def to_dict(self) -> dict:
        return {"root": self.root, "layout": self.layout, "settings": self.settings, "seconds": self.seconds,
                "counts": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
                "findings": [f.to_dict() for f in self.findings], "images": [r.to_dict() for r in self.images],
                "buckets": self.buckets}


def format_report(report: Report) -> str:
    """The report as plain text for the console."""
    marks = {"error": "ERROR  ", "warning": "WARNING", "info": "info   "}
    root = f'"{report.root}"' if " " in str(report.root) else str(report.root)  # copy-pasteable command
    lines = [f"Dataset {report.root} ({report.layout.replace('_', ' ')} layout, {len(report.images)} images, "
             f"checked in {report.seconds:.2f} s)"]
    for f in report.findings:
        lines.append(f"{marks[f.severity]} {f.message}")
        lines.append(f"        -> {f.hint}" + (f"  [fix: python -m engine fix {root} {f.fix}]" if f.fix else ""))
    lines.append(f"{len(report.errors)} errors, {len(report.warnings)} warnings.")
    return "\n".join(lines)
