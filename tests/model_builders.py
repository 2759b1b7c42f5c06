"""Random-weight BackgroundMattingV2 models for tests (no weights are ever downloaded)."""

from edge_matte.model.random_weights import random_model

__all__ = ["random_model"]
