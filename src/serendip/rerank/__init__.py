"""Re-rankers: trade relevance for variety, long-tail exposure, calibration and serendipity.

Each takes a scored candidate ItemList and returns ``k`` items with reasons; the query's
``discovery`` (or the config's) times ``strength`` sets how far it moves from relevance.
"""

from serendip.rerank.base import GreedyReranker, RerankConfig
from serendip.rerank.calibration import Calibration, CalibrationConfig
from serendip.rerank.dpp import DPP, DPPConfig
from serendip.rerank.mmr import MMR, MMRConfig
from serendip.rerank.multi_objective import MultiObjective, MultiObjectiveConfig, ObjectiveWeights
from serendip.rerank.serendipity import Serendipity, SerendipityConfig
from serendip.rerank.tail import TailXQuAD, TailXQuADConfig

#: name -> reranker class, for configs and the CLI.
RERANKERS: dict[str, type[GreedyReranker]] = {
    cls.name: cls for cls in (MMR, DPP, TailXQuAD, Calibration, Serendipity, MultiObjective)
}

__all__ = [
    "RERANKERS", "GreedyReranker", "RerankConfig",
    "MMR", "MMRConfig", "DPP", "DPPConfig", "TailXQuAD", "TailXQuADConfig",
    "Calibration", "CalibrationConfig", "Serendipity", "SerendipityConfig",
    "MultiObjective", "MultiObjectiveConfig", "ObjectiveWeights",
]
