"""V-Kps guider: a small per-frame conv net from the drawn keypoint image to UNet-width features."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class VKpsGuider(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)

    def forward(self, kps_images: torch.Tensor) -> torch.Tensor:
        """kps_images [B, 3, F, H, W] in [0, 1] -> features [B, C, F, H/8, W/8]."""
        batch, channels, num_frames, height, width = kps_images.shape
        hidden = kps_images.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, channels, height, width)
        hidden = F.silu(self.conv_in(hidden))
        for block in self.blocks:
            hidden = F.silu(block(hidden))
        hidden = self.conv_out(hidden)
        return hidden.reshape(batch, num_frames, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
