"""What SDXL can do (torch-free): as SD (a DDPM UNet, classifier-free guidance), with two CLIP text encoders."""
from __future__ import annotations

from engine.models.families.base import Capabilities

CAPABILITIES = {"sdxl": Capabilities(name="sdxl", label="SDXL", a_label="an SDXL")}
