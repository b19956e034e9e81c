"""`obj.save(dir)` and `obj.push_to_hub(repo)` on every object `vistok.load` returns: an export passed on as one.

What is saved is the object's network (`model`) with its weights as they are now (a model changed in memory is saved
as changed), the export's config.json, and every other file of the folder it came from copied as it is (a VAE or a
paired generator's FlexTok in `tokenizer/`, a preview), written as one self-contained export
(`vistok.io.exports.write_export`): `vistok.load(dir)` gives the same outputs. `push_to_hub` saves to a temporary
folder and uploads it with huggingface_hub (`HfApi.create_repo`, `upload_folder`); it returns the pinned source
`hf://org/repo@COMMIT` that loads exactly what was pushed.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from vistok.errors import VistokError
from vistok.io.exports import CONFIG, WEIGHTS, Export, write_export
from vistok.io.paths import check_apart
from vistok.io.sources import HF_PREFIX, parse_hf


class Shareable:
    """Mixin of the API objects: `model` (the network) and `export` (what it was loaded from, set by `vistok.load`)."""

    model: nn.Module
    export: Export | None = None

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """Write this object as an export to `out_dir` (new, empty, or an export of the same family unless
        `overwrite`); returns the folder. `vistok.load(out_dir)` loads it back."""
        export = self._loaded_export()
        check_apart({"out_dir": out_dir}, {"the export it was loaded from": export.folder})
        meta = copy.deepcopy(export.meta)
        family, config = meta.pop("family"), meta.pop("config")

        def copy_rest(folder: Path) -> None:  # everything else the export holds, e.g. tokenizer/, preview.png
            for item in sorted(export.folder.iterdir()):
                if item.name in (CONFIG, WEIGHTS) or item.name.startswith("."):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copyfile)(item, folder / item.name)

        return write_export(out_dir, family, config, self.model.state_dict(), extra=copy_rest, overwrite=overwrite,
                            **meta)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload a vistok export", **upload: Any) -> str:
        """Upload this object as an export to the Hugging Face repo `repo_id` ("org/name"; created when missing);
        returns `hf://org/name@COMMIT`, which `vistok.load` accepts. `upload` goes to `HfApi.upload_folder`."""
        repo = repo_id[len(HF_PREFIX):] if str(repo_id).startswith(HF_PREFIX) else str(repo_id)
        parsed, revision, sub = parse_hf(HF_PREFIX + repo)
        if revision or sub:
            raise VistokError(f"push_to_hub needs a repository id org/name, not {repo_id!r}; pass revision=... for a "
                              "branch")
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise VistokError("push_to_hub needs huggingface_hub; pip install huggingface_hub") from None
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save(Path(tmp) / "export")
            api = HfApi(token=token)
            try:
                api.create_repo(parsed, private=private, exist_ok=True)
                info = api.upload_folder(folder_path=str(folder), repo_id=parsed, commit_message=commit_message,
                                         **upload)
            except (OSError, ValueError) as err:  # HTTP errors (auth, network) are OSErrors: one line
                first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
                raise VistokError(f"cannot push to {parsed} ({type(err).__name__}: {first}); log in with "
                                  "`huggingface-cli login` or pass token=...") from None
        commit = getattr(info, "oid", None)
        return f"{HF_PREFIX}{parsed}" + (f"@{commit}" if commit else "")

    def _loaded_export(self) -> Export:
        if self.export is None:
            raise VistokError(f"{type(self).__name__}.save needs an object returned by vistok.load (it saves that "
                              "export's files with the current weights)")
        return self.export


__all__ = ["Shareable"]
