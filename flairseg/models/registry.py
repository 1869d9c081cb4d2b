"""The model registry itself, apart so model modules can import it without cycles."""

from flairseg.registry import Registry

MODELS: Registry = Registry("model")
