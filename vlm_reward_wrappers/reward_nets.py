"""The reward nets: ensembles of RL-VLM-F's CNN or ResNet-18 (frames) and an MLP (observations), each member
scored in one batched pass."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlm_reward_wrappers.torchvision_compat import import_torchvision


class EnsembleLinear(nn.Module):
    """``ensemble_size`` independent linear layers applied in one batched matmul.

    Input (B, E, in_features) -> output (B, E, out_features).
    """

    def __init__(self, ensemble_size: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, out_features))
        bound = 1.0 / np.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bei,eio->beo", x, self.weight) + self.bias


class EnsembleCNN(nn.Module):
    """RL-VLM-F's reward CNN, ``ensemble_size`` copies whose weights are kept as one grouped network.

    Default layers are the paper's: kernels 5, 3, 3, 3, channels 16, 32, 64, 128, strides 3, 2, 2, 2,
    leaky ReLU, a linear head to one output and tanh.

    Input (B, E, 3, H, W) float frames in [-0.5, 0.5] (member e reads slice e), or (B, 3, H, W) read
    by every member -> output (B, E).
    """

    def __init__(
        self,
        ensemble_size: int,
        reward_image_size: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        kernels: Sequence[int] = (5, 3, 3, 3),
        strides: Sequence[int] = (3, 2, 2, 2),
    ) -> None:
        super().__init__()
        self.ensemble_size = ensemble_size
        layers, in_channels = [], 3
        for out_channels, kernel, stride in zip(channels, kernels, strides):
            layers += [
                nn.Conv2d(in_channels * ensemble_size, out_channels * ensemble_size, kernel, stride, groups=ensemble_size),
                nn.LeakyReLU(),
            ]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            try:
                out = self.convs(torch.zeros(1, 3 * ensemble_size, reward_image_size, reward_image_size))
            except RuntimeError as error:
                raise ValueError(
                    f"reward_image_size {reward_image_size} is too small for the reward CNN's strides {tuple(strides)}; "
                    "use at least 48 (64 is the default)"
                ) from error
        self.head = EnsembleLinear(ensemble_size, out[0].numel() // ensemble_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, e = x.shape[0], self.ensemble_size
        # The Sequential only keeps the weights (and saved files' names); the layers run as functional calls.
        first, *rest = list(self.convs)[0::2]
        if x.ndim == 4:
            # Shared input: one ungrouped first conv equals the grouped one on E copies, without the copies.
            h = F.leaky_relu(F.conv2d(x, first.weight, first.bias, first.stride))
            for conv in rest:
                h = F.leaky_relu(F.conv2d(h, conv.weight, conv.bias, conv.stride, groups=e))
            features = h.reshape(b, e, -1)
        else:
            # Per-member inputs (training): each member runs on its own contiguous activations, since on a
            # CPU a training step through PyTorch's grouped convolutions takes 1.6x as long (same weights).
            features = []
            for m, h in enumerate(x.unbind(1)):
                for conv in (first, *rest):
                    h = F.leaky_relu(F.conv2d(h, conv.weight.chunk(e)[m], conv.bias.chunk(e)[m], conv.stride))
                features.append(h.flatten(1))
            features = torch.stack(features, 1)
        return torch.tanh(self.head(features)).squeeze(-1)


class EnsembleResNet(nn.Module):
    """RL-VLM-F's reward net for cloth and rope: ``ensemble_size`` torchvision ResNet-18s (BasicBlock,
    [2, 2, 2, 2]) with one output each, trained from scratch and unbounded (no tanh), as RL-VLM-F's
    ``gen_image_net2`` builds them, but with group norm (32 groups) in place of batch norm. RL-VLM-F's
    batch norm stays in training mode, so a frame's reward depends on the frames scored beside it; in
    evaluation mode its running statistics lag when an update stops early after a few gradient steps
    (held-out pair accuracy 0.90 against 0.96 with group norm on the tests' 32 px brightness frames).
    About 11 M weights a member against the CNN's 0.1 M: on one CPU core a 64 px frame takes about 26 ms
    forward and backward.

    Input (B, E, 3, H, W) float frames (member e reads slice e), or (B, 3, H, W) read by every member
    -> output (B, E).
    """

    def __init__(self, ensemble_size: int) -> None:
        super().__init__()
        try:
            import_torchvision()
            from torchvision.models.resnet import BasicBlock, ResNet
        except ImportError as error:
            raise ImportError("reward_net='resnet18' needs torchvision: pip install 'vlm-reward-wrappers[resnet]'") from error
        self.ensemble_size = ensemble_size
        self.members = nn.ModuleList(
            ResNet(BasicBlock, [2, 2, 2, 2], num_classes=1, norm_layer=lambda channels: nn.GroupNorm(32, channels))
            for _ in range(ensemble_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x] * self.ensemble_size if x.ndim == 4 else x.unbind(1)
        return torch.cat([member(h) for member, h in zip(self.members, inputs)], dim=1)


class EnsembleMLP(nn.Module):
    """BPref's reward MLP on state observations (3 hidden layers of 256, leaky ReLU, tanh), ensembled.

    Input (B, E, D) float -> output (B, E).
    """

    def __init__(self, ensemble_size: int, input_dim: int, hidden: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__()
        dims = [input_dim, *hidden]
        self.layers = nn.ModuleList(EnsembleLinear(ensemble_size, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(ensemble_size, dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.leaky_relu(layer(x))
        return torch.tanh(self.head(x)).squeeze(-1)
