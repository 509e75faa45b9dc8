"""Encoders (torchvision's networks, `fc` = Identity) and classification heads."""

from .audio import audio_encoder, audio_resnet18
from .device import CLIP_NDIM, MODALITIES, autocast, encode, flat_clips, to_device
from .heads import ClassificationHead
from .video import VIDEO_ARCHS, r2plus1d_18, r3d_18, scale_channels, video_encoder

__all__ = ["VIDEO_ARCHS", "ClassificationHead", "audio_encoder", "audio_resnet18", "r2plus1d_18",
           "r3d_18", "scale_channels", "video_encoder", "autocast", "to_device", "encode", "flat_clips", "CLIP_NDIM", "MODALITIES"]
