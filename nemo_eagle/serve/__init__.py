"""NIM-style serving: OpenAI-compatible REST (FastAPI) in front of Triton Inference Server hosting EagleModel.

``create_app(settings, backend)`` builds the REST app; ``nemo-eagle serve`` starts tritonserver and the app.
"""

from __future__ import annotations

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from nemo_eagle.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from nemo_eagle.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module 'nemo_eagle.serve' has no attribute {name!r}")
