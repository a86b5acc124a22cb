"""The HTTP service: a FastAPI app over an :class:`Engine` (store + current model)."""

from serendip.service.app import DEFAULT_MAX_BODY, create_app
from serendip.service.engine import Engine, EngineConfig, NotReadyError
from serendip.service.limits import ServerLimits

__all__ = ["create_app", "DEFAULT_MAX_BODY", "Engine", "EngineConfig", "NotReadyError", "ServerLimits"]
