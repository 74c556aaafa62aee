"""The estimate in words for the dry run (engine/cli.py); the GUI's gauge (ui/fit_gauge.py) shows the same data its
own way."""
from __future__ import annotations

from engine.models.fit.peak import Estimate
from engine.models.fit.savers import Saver


def _option_words(option: tuple[Saver, ...]) -> str:
    return " and ".join(f"{sv.words} (-{sv.saves_gb:.1f} GB)" for sv in option)


def describe_fit(fit: Estimate, options: list, gpu_name: str | None, free_gb: float | None,
                 ram_total_gb: float | None, ram_free_gb: float | None) -> list[str]:
    """The estimate in lines for the dry run (the GUI shows the same data its own way)."""
    low, high = fit.range_gb
    lines = [(f"needs ~{fit.vram_gb:.1f} GB of VRAM at its peak ({fit.phase}; {low:.1f}-{high:.1f} GB with the "
              f"estimate's ±{fit.margin:.0%}) and ~{fit.ram_gb:.1f} GB of system RAM ({fit.ram_phase})")]
    lines.append("  model: " + ", ".join(f"{label} {_count(params)}" + (f" {dtype}" if dtype else "")
                                         for label, params, dtype in fit.model))
    lines += [f"  {_amount(p.vram_gb)}  {p.what}" for p in fit.parts if p.vram_gb]
    if fit.phase != "training":
        lines.append(f"  (training itself: ~{fit.phases['training']:.1f} GB)")
    lines += [f"  {_amount(p.ram_gb)}  RAM: {p.what}" for p in fit.parts if p.ram_gb]
    if fit.tokens:
        lines.append(f"  {fit.tokens} tokens per image (image + text)")
    lines += [f"  note: {note}" for note in fit.notes]
    gpu = (gpu_name or "GPU").removeprefix("NVIDIA ").removeprefix("GeForce ")
    if free_gb is None and gpu_name:
        lines.append(f"your {gpu}: its free memory could not be read, so the estimate is not compared with it")
    elif free_gb is None:
        lines.append("no NVIDIA GPU found (nvidia-smi did not answer): the estimate cannot be compared with a card")
    elif fit.vram_gb <= free_gb:
        tight = "; tight: within the estimate's margin" if high > free_gb else ""
        lines.append(f"fits: your {gpu} has {free_gb:.1f} GB free ({free_gb - fit.vram_gb:.1f} GB to spare{tight})")
    else:
        training, caching = fit.phases["training"], max(fit.phases["caching text"], fit.phases["caching latents"])
        if training > free_gb:
            lines.append(f"needs ~{training:.1f} GB, your {gpu} has {free_gb:.1f} GB free" +
                         _savers_words(options, free_gb))
            lines += [f"  {' + '.join(sv.words for sv in option)}: "
                      f"{' '.join(f'--set {k}={v}' for sv in option for k, v in sv.changes.items())}"
                      f"  (then ~{option[-1].vram_gb:.1f} GB)" for option in options if option[-1].vram_gb <= free_gb]
        if caching > free_gb:
            # the text encoder alone may be bigger than the card (Z-Image's Qwen3-4B: 7.5 GB in bf16)
            fix = ("set model.text_encoder_fp8: true (the text encoder in fp8 while it encodes)"
                   if fit.phases["caching text"] > free_gb and not fit.text_encoder_fp8 else
                   "close programs that use the GPU")
            lines.append(f"{'  also: ' if training > free_gb else ''}while the captions and images are encoded "
                         f"(before training) the card holds ~{caching:.1f} GB, your {gpu} has {free_gb:.1f} GB free: "
                         f"{fix}")
        lines.append("  (on Windows a run that does not fit spills into shared GPU memory and gets 10x slower "
                     "instead of stopping)")
    if ram_total_gb is not None:
        free = f", {ram_free_gb:.1f} GB free" if ram_free_gb is not None else ""
        if fit.ram_gb <= (ram_free_gb if ram_free_gb is not None else ram_total_gb):
            verdict = "fits"
        elif fit.ram_gb <= ram_total_gb:
            verdict = "more than is free now: close programs before the run, or the system pages to disk (slow)"
        else:
            then = (" (the peak is only while loading)" if fit.ram_phase == "loading" else
                    ", or keep fewer blocks in RAM (model.block_swap)")
            verdict = ("more than installed: the system pages to disk (slow) or stops with 'paging file too small'; "
                       f"raise the page file{then}")
        lines.append(f"RAM: needs ~{fit.ram_gb:.1f} GB, this PC has {ram_total_gb:.1f} GB{free}: {verdict}")
    return lines


def _count(params: int) -> str:
    """11.90 B, 123.1 M, 78.5 K parameters."""
    for size, unit, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if params >= size:
            return f"{params / size:.{digits}f} {unit}"
    return str(params)


def _amount(gb: float) -> str:
    """'  9.9 GB' or ' 12 MB' (tiny models and small parts), aligned."""
    return f"{gb:5.1f} GB" if gb >= 0.1 else f"{gb * 1024:5.0f} MB"


def _savers_words(options: list, free_gb: float) -> str:
    """': turn on A (-x GB) or B (-y GB)' for the options that fit, or why nothing does."""
    fitting = [o for o in options if o[-1].vram_gb <= free_gb]
    if fitting:
        return ": turn on " + " or ".join(_option_words(o) for o in fitting)
    if options:
        return (f": even with {_option_words(options[0])} it needs ~{options[0][-1].vram_gb:.1f} GB; this card is "
                f"too small for these settings")
    return "; no memory saver is left to turn on: this card is too small for these settings"
