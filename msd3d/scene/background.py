"""What a ray sees when it leaves the scene: a colour per ray direction.

* ``"mlp"``: a small MLP of the (frequency-encoded) ray direction with a sigmoid, learned with the
  scene (threestudio's ``NeuralEnvironmentMapBackground``).
* ``"solid"``: one fixed colour.
* ``"random_solid"``: during training each view gets its own random solid colour (so the scene cannot
  hide its silhouette in the background); in eval mode the fixed ``color``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msd3d.rng import draw_device, rand
from msd3d.scene.components import mlp
from msd3d.validation import check_choice, join


@dataclass
class BackgroundConfig:
    type: str = "mlp"
    """"mlp", "solid" or "random_solid"."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The solid colour (and random_solid's colour in eval mode), RGB in [0, 1]."""
    frequencies: int = 2
    """Frequency bands of the direction encoding for the MLP background (0 = raw direction)."""
    hidden_dim: int = 16
    """Width of the MLP background."""
    hidden_layers: int = 2
    """Hidden layers of the MLP background."""

    def validate(self, path: str = "background") -> None:
        from msd3d.registry import BACKGROUNDS

        check_choice(join(path, "type"), self.type, BACKGROUNDS.names())
        if len(self.color) != 3 or any(not 0.0 <= float(v) <= 1.0 for v in self.color):
            raise ValueError("background.color must be three values in [0, 1]")
        if self.frequencies < 0:
            raise ValueError("background.frequencies must be non-negative")
        if self.hidden_dim < 1 or self.hidden_layers < 0:
            raise ValueError("background.hidden_dim must be at least 1 and background.hidden_layers non-negative")


class Background(nn.Module):
    """``background(directions (..., 3)) -> colours (..., 3)`` in [0, 1]."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MLP background's weights train at ``train.lr_network``."""
        return {"network": list(self.parameters())}

    def __init__(self, config: BackgroundConfig | None = None) -> None:
        super().__init__()
        self.config = config or BackgroundConfig()
        self.config.validate()
        c = self.config
        self.register_buffer("color", torch.tensor(c.color, dtype=torch.float32), persistent=False)
        self.net = mlp(3 * (1 + 2 * c.frequencies), c.hidden_dim, c.hidden_layers, 3) if c.type == "mlp" else None

    def encode_directions(self, directions: Tensor) -> Tensor:
        """[d, sin(2^k pi d), cos(2^k pi d)] for k < frequencies: (..., 3) -> (..., 3 (1 + 2K))."""
        out = [directions]
        for k in range(self.config.frequencies):
            out += [torch.sin((2.0**k) * torch.pi * directions), torch.cos((2.0**k) * torch.pi * directions)]
        return torch.cat(out, dim=-1)

    def forward(
        self, directions: Tensor, generator: torch.Generator | None = None, randomize: bool | None = None
    ) -> Tensor:
        """Colours (..., 3) for unit ray directions (..., 3).

        For ``random_solid`` with ``randomize`` (default: in training mode) the first dimension of
        ``directions`` is the view: each view draws one colour (with ``generator``, on its device).
        """
        c = self.config
        if c.type == "mlp":
            assert self.net is not None
            return torch.sigmoid(self.net(self.encode_directions(directions)))
        randomize = self.training if randomize is None else randomize
        if c.type == "random_solid" and randomize:
            views = directions.shape[0] if directions.dim() > 1 else 1
            colors = rand((views, 3), generator, draw_device(generator, directions)).to(directions)
            if directions.dim() == 1:
                return colors[0]
            return colors.view(views, *([1] * (directions.dim() - 2)), 3).expand(*directions.shape[:-1], 3)
        return self.color.to(directions).expand(*directions.shape[:-1], 3)
