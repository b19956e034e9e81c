"""Cached FlexTok token ids as a training set for the generators on FlexTok tokens.

FlexTok (Bachmann et al., arXiv 2502.13967) trains its AR stage on token ids of the training images, computed once.
`vistok encode --ckpt FLEXTOK --input cifar10-train --out FILE.npz` writes them (`write_token_file`; `vistok sample`
writes the ids it generates the same way, and `read_token_file` reads both): `ids` (N, K) int32, `k` (N,) int32
(tokens kept per image; training needs all K) and `labels` (N,) for a labelled dataset; an optional `classes` array
names the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.arrays import read_npz
from vistok.errors import VistokError, require


@dataclass(frozen=True)
class TokenDataConfig:
    tokens: str = "runs/tokens/cifar10-flextok-tiny-train.npz"  # from `vistok encode` (see the module docstring)
    limit: int = 0  # use only the first N sequences (0: all)
    classes: tuple[str, ...] = ()  # class names for the export (default: the file's `classes`, else the indices)


class TokenDataset(Dataset):
    """(ids (K,) int64, label) pairs; `classes` names the labels."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> None:
        self.ids, self.labels, self.classes = ids, labels, classes

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[index], self.labels[index]


def read_token_file(path: str | Path, encode_hint: str = "") -> dict[str, np.ndarray]:
    """Every array of a `vistok encode` .npz, with an integer (N, K) `ids` checked; one-line errors name the
    `vistok encode` command that writes the file (`encode_hint`, or the bare command)."""
    path = Path(path).expanduser()
    hint = f"; write it with: {encode_hint}" if encode_hint else "; write it with `vistok encode`"
    arrays = read_npz(path, what="token file", hint=hint)
    ids = arrays.get("ids")
    if ids is None or ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise VistokError(f"{path} needs an integer 'ids' array (N, K); found {sorted(arrays)}{hint}")
    return arrays


def write_token_file(path: str | Path, ids: np.ndarray, k: np.ndarray | None = None, labels: np.ndarray | None = None,
                     classes: tuple[str, ...] = ()) -> Path:
    """Write the format `read_token_file` reads: `ids` (N, K) int32, `k` (N,) int32 (tokens kept per image; default
    all K), and `labels` (N,) int64 / `classes` when given. The file appears whole or not at all."""
    from vistok.io.atomic import atomic_write

    ids = np.asarray(ids)
    require(ids.ndim == 2 and (ids.dtype.kind in "iu" or ids.size == 0),
            f"token ids must be integers (N, K), got {ids.dtype} {ids.shape}")
    n = len(ids)
    k = np.full(n, ids.shape[1], np.int32) if k is None else np.asarray(k)
    require(k.shape == (n,) and (k.dtype.kind in "iu" or n == 0),
            f"'k' must hold one integer prefix length per image ({n})")
    arrays = {"ids": ids.astype(np.int32), "k": k.astype(np.int32)}
    if labels is not None:
        labels = np.asarray(labels)
        require(labels.shape == (n,), f"'labels' must hold one label per image ({n}), got shape {labels.shape}")
        arrays["labels"] = labels.astype(np.int64)
    if classes:
        arrays["classes"] = np.asarray(classes)
    return atomic_write(Path(path).expanduser(), lambda f: np.savez(f, **arrays))


def load_tokens(cfg: TokenDataConfig, registers: int, vocab_size: int, encode_hint: str = "") -> TokenDataset:
    """The token file of `cfg`, checked against the tokenizer (K registers, ids below vocab_size): full sequences
    only, labels required. `encode_hint` is the `vistok encode` command that writes the file (named in errors)."""
    path = Path(cfg.tokens).expanduser()
    hint = f"; write it with: {encode_hint}" if encode_hint else "; write it with `vistok encode`"
    arrays = read_token_file(path, encode_hint)
    ids, labels = arrays["ids"], arrays.get("labels")
    require(ids.shape[1] == registers,
            f"{path} holds {ids.shape[1]} tokens per image but the tokenizer has {registers} "
            f"registers; encode with the same FlexTok export{hint}")
    k = arrays.get("k", np.full(len(ids), registers))
    require(bool((k == registers).all()), f"{path} keeps fewer than {registers} tokens for some images (k); encode "
                                          f"without --tokens so every image has all of them{hint}")
    require(ids.size == 0 or (0 <= ids.min() and ids.max() < vocab_size),
            f"{path} holds ids outside 0..{vocab_size - 1}; encode with the same FlexTok export{hint}")
    if labels is None or labels.shape != (len(ids),):
        raise VistokError(f"{path} has no 'labels' (one per image); encode a labelled dataset (cifar10-train or a "
                          f"folder of class sub-folders){hint}")
    if cfg.limit:
        ids, labels = ids[:cfg.limit], labels[:cfg.limit]
    classes = tuple(cfg.classes) or tuple(str(c) for c in arrays.get("classes", ()))
    num = int(labels.max()) + 1 if len(labels) else 0
    if not classes:
        classes = tuple(str(i) for i in range(num))
    require(len(classes) >= num, f"{len(classes)} class names for labels up to {num - 1}; fix data.classes")
    return TokenDataset(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels.astype(np.int64)), classes)


__all__ = ["TokenDataConfig", "TokenDataset", "load_tokens", "read_token_file", "write_token_file"]
