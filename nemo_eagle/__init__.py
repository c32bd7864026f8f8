"""nemo_eagle: NVIDIA EAGLE2 vision-language models as a NeMo plugin package."""

from __future__ import annotations

from nemo_eagle._version import __version__

__all__ = ["EagleConfig", "EagleModel", "EagleProcessor", "__version__"]


def __getattr__(name: str):
    # Lazy so `import nemo_eagle` (and `nemo-eagle tiles`) stays light.
    if name == "EagleModel":
        from nemo_eagle.modeling.eagle import EagleModel

        return EagleModel
    if name == "EagleProcessor":
        from nemo_eagle.data.processor import EagleProcessor

        return EagleProcessor
    if name == "EagleConfig":
        from nemo_eagle.config import EagleConfig

        return EagleConfig
    raise AttributeError(f"module 'nemo_eagle' has no attribute {name!r}")
