"""What SD 1.x and SD 2.x can do (torch-free): DDPM UNets trained as epsilon or v models, or as a rectified flow
on a v base; classifier-free guidance; LoRA or a full fine-tune, the CLIP text encoder too."""
from __future__ import annotations

from engine.models.families.base import Capabilities

SD15 = Capabilities(name="sd15", label="SD 1.x", a_label="an SD 1.x")
SD2 = Capabilities(name="sd2", label="SD 2.x", a_label="an SD 2.x")

CAPABILITIES = {c.name: c for c in (SD15, SD2)}
