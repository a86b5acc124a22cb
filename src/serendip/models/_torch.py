"""What the PyTorch-trained scorers share: the device, the logQ correction, and storing a
network's weights as plain named arrays (``w_<name>``) in a component's state."""

from __future__ import annotations

from typing import Any

import numpy as np

from serendip.data.dataset import Dataset

__all__ = ["pick_device", "log_popularity", "weights_to_state", "state_to_weights"]


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
