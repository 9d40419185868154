"""The V-Express denoising UNet: SD1.5's layout run on every frame, with V-Kps features added after
`conv_in`, reference and audio attention in every spatial transformer, and motion modules.

Video enters and leaves as [B, C, F, H, W]; inside, frames are folded into the batch (B*F, C, H, W).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from ..step_cache import CacheSlot
from .attention import ReferenceKV, SpatialTransformer, VExpressTransformerBlock
from .motion import MotionModule

UNET_CONFIG_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
    "norm_eps",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "up_block_types",
    "downsample_padding",
    "mid_block_scale_factor",
)


class FrameResnetBlock(ResnetBlock2D):
    """diffusers' ResnetBlock2D over (B*F, C, H, W) whose time embedding arrives once per video [B, D].

    Projecting the embedding before repeating it over frames is cheaper, and it is what the
    published model computes: a Linear over B rows and over B*F rows round differently."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        shortcut = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        hidden_states = self.conv1(self.nonlinearity(self.norm1(hidden_states)))
        time = self.time_emb_proj(self.nonlinearity(temb)).repeat_interleave(num_frames, dim=0)
        hidden_states = hidden_states + time[:, :, None, None]
        hidden_states = self.conv2(self.dropout(self.nonlinearity(self.norm2(hidden_states))))
        return (shortcut + hidden_states) / self.output_scale_factor


class UNetStage(nn.Module):
    """One down, mid or up block: (resnet, [attention], motion) per layer, then an optional resampler."""

    def __init__(self, resnets: list[nn.Module], attentions: list[nn.Module] | None, motion_modules: list[nn.Module]):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.motion_modules = nn.ModuleList(motion_modules)


class VExpressUNet(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_head_dim: int = 8,
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types: Sequence[str] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        motion_num_attention_heads: int = 8,
        motion_max_len: int = 32,
    ):
        super().__init__()
        # SD1.5's config names the head count "attention_head_dim" (a diffusers-era quirk).
        heads = attention_head_dim
        time_dim = block_out_channels[0] * 4
        self.gradient_checkpointing = False

        def resnet(cin: int, cout: int, scale: float = 1.0) -> FrameResnetBlock:
            return FrameResnetBlock(
                in_channels=cin, out_channels=cout, temb_channels=time_dim, eps=norm_eps,
                groups=norm_num_groups, output_scale_factor=scale,
            )

        def attention(channels: int) -> SpatialTransformer:
            return SpatialTransformer(channels, heads, cross_attention_dim, norm_num_groups)

        def motion(channels: int) -> MotionModule:
            return MotionModule(channels, motion_num_attention_heads, motion_max_len, norm_num_groups)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim)

        self.down_blocks = nn.ModuleList()
        channels = block_out_channels[0]
        for index, block_type in enumerate(down_block_types):
            out = block_out_channels[index]
            ins = [channels] + [out] * (layers_per_block - 1)
            stage = UNetStage(
                [resnet(cin, out) for cin in ins],
                [attention(out) for _ in ins] if block_type.startswith("CrossAttn") else None,
                [motion(out) for _ in ins],
            )
            if index < len(down_block_types) - 1:
                stage.downsamplers = nn.ModuleList(
                    [Downsample2D(out, use_conv=True, out_channels=out, padding=downsample_padding, name="op")]
                )
            self.down_blocks.append(stage)
            channels = out

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        previous = reversed_channels[0]
        for index, block_type in enumerate(up_block_types):
            out = reversed_channels[index]
            skip = reversed_channels[min(index + 1, len(block_out_channels) - 1)]
            layers = layers_per_block + 1
            ins = [(previous if j == 0 else out) + (skip if j == layers - 1 else out) for j in range(layers)]
            stage = UNetStage(
                [resnet(cin, out) for cin in ins],
                [attention(out) for _ in ins] if block_type.startswith("CrossAttn") else None,
                [motion(out) for _ in ins],
            )
            if index < len(up_block_types) - 1:
                stage.upsamplers = nn.ModuleList([Upsample2D(out, use_conv=True, out_channels=out)])
            self.up_blocks.append(stage)
            previous = out

        mid = block_out_channels[-1]
        self.mid_block = UNetStage(
            [resnet(mid, mid, mid_block_scale_factor), resnet(mid, mid, mid_block_scale_factor)],
            [attention(mid)],
            [motion(mid)],
        )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def reference_kv(self, reference_features: Mapping[str, torch.Tensor]) -> dict[str, ReferenceKV]:
        """attn1_5 keys and values of every block, to pass as `reference_features` instead of the
        features themselves: computed once per generation rather than for every frame of every step."""
        return {
            path: self.get_submodule(path).reference_kv(feature)
            for path, feature in reference_features.items()
            if isinstance(self.get_submodule(path), VExpressTransformerBlock)
        }

    @classmethod
    def from_unet2d_config(cls, unet_config: Mapping, **overrides) -> "VExpressUNet":
        """Build from an SD1.5-family `unet/config.json` dictionary."""
        kwargs = {key: unet_config[key] for key in UNET_CONFIG_KEYS if key in unet_config}
        kwargs.update(overrides)
        return cls(**kwargs)

    # The UNet checkpoints its layers itself (`_run`), so it needs none of diffusers' checkpointing
    # internals, which differ between the versions the requirements allow (0.30 has no ModelMixin
    # `_set_gradient_checkpointing`; later versions pass a checkpointing function instead).
    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _attend(self, attention: SpatialTransformer, hidden, context, path: str):
        """A spatial transformer with the reference features of its blocks (paired by module path)."""
        references = [context["reference"][f"{path}.transformer_blocks.{j}"] for j in range(len(attention.transformer_blocks))]
        return self._run(attention, hidden, context["audio"], references, context["reference_weight"], context["audio_weight"],
                         context["zero_context_rows"])

    def _stage_layers(self, stage: UNetStage, hidden, temb, context, block_path: str, skips=None, collect=None):
        num_frames = context["num_frames"]
        attentions = stage.attentions if stage.attentions is not None else [None] * len(stage.resnets)
        for index, (resnet, attention, motion) in enumerate(zip(stage.resnets, attentions, stage.motion_modules)):
            if skips is not None:
                hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = self._run(resnet, hidden, temb, num_frames)
            if attention is not None:
                hidden = self._attend(attention, hidden, context, f"{block_path}.attentions.{index}")
            hidden = self._run(motion, hidden, num_frames)
            if collect is not None:
                collect.append(hidden)
        return hidden

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        audio_tokens: torch.Tensor,
        reference_features: Mapping[str, torch.Tensor],
        kps_features: torch.Tensor | None = None,
        reference_weight: float = 1.0,
        audio_weight: float = 1.0,
        zero_context_videos: int = 0,
        deep_cache: CacheSlot | None = None,
    ) -> torch.Tensor:
        """Predict the model output for video latents.

        sample [B, C, F, h, w]; audio_tokens [B'*F, T, D] (frame-major within each batch item);
        reference_features: block path -> [B' or B'*F, L, C]; kps_features [B, C0, F, h, w] or None.
        `zero_context_videos` (Z): the first Z videos have all-zero reference features and audio tokens
        (CFG's unconditional branch); those are not passed (B' = B - Z) and the reference and audio
        attentions give them their exact zero-context output without running. Returns [B, C_out, F, h, w].
        `deep_cache` (see step_cache.py): where the kept deep features may stand in for every block
        between the first down block and the last up block, only those two run.
        """
        batch, _, num_frames, height, width = sample.shape
        conditional = batch - zero_context_videos
        hidden = sample.permute(0, 2, 1, 3, 4).reshape(batch * num_frames, -1, height, width)

        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype=hidden.dtype))

        context = {
            "num_frames": num_frames,
            "audio": audio_tokens.reshape(conditional * num_frames, *audio_tokens.shape[-2:]),
            "reference": {
                path: (feature.repeat_interleave(num_frames, dim=0)
                       if not isinstance(feature, ReferenceKV) and feature.shape[0] == conditional != conditional * num_frames
                       else feature)
                for path, feature in reference_features.items()
            },
            "reference_weight": reference_weight,
            "audio_weight": audio_weight,
            "zero_context_rows": zero_context_videos * num_frames,
        }

        hidden = self.conv_in(hidden)
        if kps_features is not None:
            hidden = hidden + kps_features.permute(0, 2, 1, 3, 4).reshape(hidden.shape)

        # Upsampling needs explicit sizes when the latent is not divisible by the total down factor.
        factor = 2 ** (len(self.down_blocks) - 1)
        explicit_sizes = height % factor != 0 or width % factor != 0

        if deep_cache is not None and len(self.down_blocks) < 2:
            raise ValueError("the deep-feature cache needs a UNet with at least two down blocks")
        last_up = len(self.up_blocks) - 1
        skips = [hidden]
        for index, stage in enumerate(self.down_blocks):
            hidden = self._stage_layers(stage, hidden, temb, context, f"down_blocks.{index}", collect=skips)
            if index == 0 and deep_cache is not None:
                shallow = hidden
                deep = deep_cache.reusable(shallow)
                if deep is not None:
                    # The skips left are exactly the ones the last up block takes.
                    hidden = self._stage_layers(self.up_blocks[last_up], deep, temb, context, f"up_blocks.{last_up}", skips=skips)
                    return self._output(hidden, batch, num_frames)
            if hasattr(stage, "downsamplers"):
                hidden = stage.downsamplers[0](hidden)
                skips.append(hidden)

        mid = self.mid_block
        hidden = self._run(mid.resnets[0], hidden, temb, num_frames)
        hidden = self._attend(mid.attentions[0], hidden, context, "mid_block.attentions.0")
        hidden = self._run(mid.motion_modules[0], hidden, num_frames)
        hidden = self._run(mid.resnets[1], hidden, temb, num_frames)

        for index, stage in enumerate(self.up_blocks):
            if index == last_up and deep_cache is not None:
                deep_cache.store(shallow, hidden)
            hidden = self._stage_layers(stage, hidden, temb, context, f"up_blocks.{index}", skips=skips)
            if hasattr(stage, "upsamplers"):
                size = skips[-1].shape[-2:] if explicit_sizes else None
                hidden = stage.upsamplers[0](hidden, size)
        return self._output(hidden, batch, num_frames)

    def _output(self, hidden: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
        """The last block's features (B*F, C, h, w) -> the prediction [B, C_out, F, h, w]."""
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return hidden.reshape(batch, num_frames, *hidden.shape[1:]).permute(0, 2, 1, 3, 4)
