"""xdc: self-supervised audio-video representation learning by cross-modal deep clustering."""

__version__ = "0.1.0"
