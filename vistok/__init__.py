"""vistok: visual tokenizers and autoregressive image generation (FlexTok, xAR, TokenUnify) with FID evaluation."""

from vistok.errors import VistokError

__version__ = "0.1.0"
__all__ = ["VistokError", "__version__"]
