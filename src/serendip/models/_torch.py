"""What the PyTorch-trained scorers share: the device, the logQ correction, and storing a
network's weights as plain named arrays (``w_<name>``) in a component's state."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset

__all__ = [
    "NeuralConfig", "pick_device", "log_popularity", "weights_to_state", "state_to_weights",
]


class NeuralConfig(ComponentConfig):
    """Training settings every torch-trained scorer has."""

    lr: float = Field(3e-3, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-5, ge=0, le=1.0)
    temperature: float = Field(0.05, gt=0, le=10, description="softmax temperature")
    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="auto: CUDA when available, else CPU")


def pick_device(spec: str) -> Any:
    """``auto``: CUDA when available, else the CPU; or the device named."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def log_popularity(data: Dataset, device: Any) -> Any:
    """log of each item's share of interactions (at least one each): the logQ correction of
    in-batch sampled softmax (Yi et al. 2019), as a tensor on ``device``."""
    import torch

    pop = np.maximum(np.asarray(data.item_popularity, dtype=np.float64), 1.0)
    return torch.tensor(np.log(pop / pop.sum()), dtype=torch.float32, device=device)


def weights_to_state(module: Any) -> dict[str, np.ndarray]:
    """A module's parameters as float32 arrays named ``w_<name, dots as __>``."""
    return {f"w_{k.replace('.', '__')}": v.detach().cpu().numpy().astype(np.float32)
            for k, v in module.state_dict().items()}


def state_to_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of ``weights_to_state``: parameter name -> array."""
    return {k[2:].replace("__", "."): v for k, v in state.items() if k.startswith("w_")}
