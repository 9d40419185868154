"""The four trained V-Express networks as one module, with the training forward pass.

Conditional dropout multiplies features by keep masks instead of skipping work, so every
trainable parameter takes part in every step (what DDP and DeepSpeed expect).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vexpress_core.models import AudioProjection, VExpressUNet, VKpsGuider, reference_features


@dataclass(frozen=True)
class ConditionKeep:
    """1 where a condition is kept, 0 where it is dropped: reference [B, F], kps [B], audio [B]."""

    reference: torch.Tensor
    kps: torch.Tensor
    audio: torch.Tensor


class VExpressNet(nn.Module):
    def __init__(self, reference_net: nn.Module, denoising_unet: VExpressUNet, v_kps_guider: VKpsGuider,
                 audio_projection: AudioProjection):
        super().__init__()
        self.reference_net = reference_net
        self.denoising_unet = denoising_unet
        self.v_kps_guider = v_kps_guider
        self.audio_projection = audio_projection

    def networks(self) -> dict[str, nn.Module]:
        """The networks under the names `vexpress_core.saving.split_weights` expects."""
        return {
            "reference_net": self.reference_net,
            "denoising_unet": self.denoising_unet,
            "v_kps_guider": self.v_kps_guider,
            "audio_projection": self.audio_projection,
        }

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        reference_latents: torch.Tensor,
        audio_windows: torch.Tensor,
        kps_images: torch.Tensor,
        keep: ConditionKeep,
    ) -> torch.Tensor:
        """Model output [B, C, F, h, w] for noisy latents [B, C, F, h, w], timesteps [B], reference
        latents [B, C, h, w], audio windows [B, F, T, D], V-Kps images [B, 3, F, H, W] in [0, 1]."""
        batch, num_frames = audio_windows.shape[:2]
        kps_features = self.v_kps_guider(kps_images) * keep.kps.view(batch, 1, 1, 1, 1).to(kps_images.dtype)
        tokens = self.audio_projection(audio_windows.flatten(0, 1))
        tokens = tokens * keep.audio.repeat_interleave(num_frames).view(-1, 1, 1).to(tokens.dtype)
        frame_keep = keep.reference.reshape(batch * num_frames, 1, 1)
        features = {
            path: feature.repeat_interleave(num_frames, dim=0) * frame_keep.to(feature.dtype)
            for path, feature in reference_features(self.reference_net, reference_latents).items()
        }
        return self.denoising_unet(noisy_latents, timesteps, tokens, features, kps_features)
