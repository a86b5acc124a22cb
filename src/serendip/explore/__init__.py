"""Exploration: bandit logs and off-policy evaluation of recommendation policies."""

from serendip.explore.bandit import FEATURES, LinearTS, LinearTSConfig
from serendip.explore.log import BanditLog
from serendip.explore.ope import (
    Estimate,
    LogisticRewardModel,
    RewardModel,
    RewardModelConfig,
    bootstrap,
    cross_fit_reward_model,
    dm,
    dr,
    estimate_all,
    estimate_from_target,
    fit_logistic_reward_model,
    fit_reward_model,
    importance_weights,
    ips,
    on_policy_value,
    snips,
    switch_dr,
)
from serendip.explore.policies import EXPLORE_REASON, EpsilonSlate, EpsilonSlateConfig

__all__ = [
    "BanditLog",
    "Estimate",
    "importance_weights",
    "ips",
    "snips",
    "dm",
    "dr",
    "estimate_all",
    "estimate_from_target",
    "on_policy_value",
    "RewardModel",
    "RewardModelConfig",
    "fit_reward_model",
    "LogisticRewardModel",
    "fit_logistic_reward_model",
    "cross_fit_reward_model",
    "switch_dr",
    "bootstrap",
    "EpsilonSlate",
    "EpsilonSlateConfig",
    "EXPLORE_REASON",
    "LinearTS",
    "LinearTSConfig",
    "FEATURES",
]
