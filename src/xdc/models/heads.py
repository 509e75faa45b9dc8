"""Classification heads that predict pseudo-labels from pooled encoder features."""

from __future__ import annotations

import torch.nn as nn


class ClassificationHead(nn.Linear):
    """A linear classifier; `reset_parameters()` gives a fresh head (done every iteration,
    because the cluster ids of a new clustering have nothing to do with the previous ones)."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        if in_dim < 1 or num_classes < 1:
            raise ValueError(f"ClassificationHead needs in_dim >= 1 and num_classes >= 1, "
                             f"got {in_dim}, {num_classes}")
        super().__init__(in_dim, num_classes)

    def reset_parameters(self) -> None:
        # torchvision's init for the final fc of its video ResNets: small normal weights, zero bias.
        nn.init.normal_(self.weight, 0.0, 0.01)
        nn.init.zeros_(self.bias)
