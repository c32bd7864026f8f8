"""EAGLE2 reference model: transformers' SigLIP and causal LM plus our pixel shuffle, projector and merge."""

from nemo_eagle.modeling.eagle import EagleModel, EagleOutput
from nemo_eagle.modeling.projector import Projector
from nemo_eagle.modeling.vision import VisionEncoder

__all__ = ["EagleModel", "EagleOutput", "Projector", "VisionEncoder"]
