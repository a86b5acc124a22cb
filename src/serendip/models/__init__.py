"""Scorers: collaborative, semantic, sequential and hybrid models over one contract."""

from serendip.models.als import ALS, ALSConfig
from serendip.models.base import BatchScorer
from serendip.models.ease import EASE, EASEConfig
from serendip.models.hybrid import TEXT_MODELS, Hybrid
from serendip.models.knn import ItemKNN, ItemKNNConfig
from serendip.models.popularity import Popularity, PopularityConfig
from serendip.models.semantic import Semantic, SemanticConfig
from serendip.models.sequential import Sequential, SequentialConfig
from serendip.models.textcf import TextCF, TextCFConfig
from serendip.models.transition import Transition, TransitionConfig
from serendip.models.two_tower import TwoTower, TwoTowerConfig

#: name -> scorer class, for configs and the CLI.
SCORERS: dict[str, type[BatchScorer]] = {
    cls.name: cls
    for cls in (Popularity, ItemKNN, EASE, ALS, Semantic, TextCF, Transition, TwoTower,
                Sequential)
}

__all__ = [
    "SCORERS", "BatchScorer", "Hybrid", "TEXT_MODELS",
    "Popularity", "PopularityConfig", "ItemKNN", "ItemKNNConfig", "EASE", "EASEConfig",
    "ALS", "ALSConfig", "Semantic", "SemanticConfig", "TextCF", "TextCFConfig",
    "Transition", "TransitionConfig", "TwoTower", "TwoTowerConfig",
    "Sequential", "SequentialConfig",
]
