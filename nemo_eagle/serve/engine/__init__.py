"""The serving engine, in modules: ``wire`` (jobs, events, errors crossing the front/backend boundary),
``core`` (``Engine``: prompt planning on the front, input preparation and static batching on the model side),
``scheduler`` (continuous batching), ``kv_cache`` (the preallocated slot cache), ``prefix_cache`` (KV prefix
reuse), ``runner`` (model calls), ``vision_cache`` (repeated images) and the detokenizer shared with
``EagleModel`` (``modeling.detokenizer``)."""

from nemo_eagle.modeling.detokenizer import Detokenizer
from nemo_eagle.serve.engine.core import RESERVED_MARKUP, Engine, PreparedJob
from nemo_eagle.serve.engine.wire import EngineError, GenerationEvent, GenerationJob, RequestPlan

__all__ = ["RESERVED_MARKUP", "Detokenizer", "Engine", "EngineError", "GenerationEvent", "GenerationJob",
           "PreparedJob", "RequestPlan"]
