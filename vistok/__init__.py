"""vistok: visual tokenizers and autoregressive image generation (FlexTok, xAR, TokenUnify) with FID evaluation.

`vistok.load(source)` returns a model as a typed object (generator, tokenizer, segmenter, feature network); see
`vistok.api`. It is imported on first use, so `import vistok` and `vistok --help` stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vistok.errors import VistokError

if TYPE_CHECKING:
    from vistok.api import Loaded

__version__ = "0.1.0"


def load(source: Any, device: Any = "cpu") -> Loaded:
    """A shipped model name, an export folder or hf://org/repo[@revision] -> Generator, PairedGenerator, Tokenizer,
    Segmenter or FeatureNet (`vistok.api.load`)."""
    from vistok.api import load as _load

    return _load(source, device)


__all__ = ["VistokError", "__version__", "load"]
