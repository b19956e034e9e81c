"""Export I/O: where a model comes from and how it is written, apart from training (`vistok.engine`).

- `sources`: a source (shipped name, folder, `hf://org/repo[@rev]`) -> a local folder, resolved once.
- `checks`: config.json read once and checked (sizes, types, paths inside the export) before anything is allocated.
- `exports`: the family table, the one loader (folder -> model) and the one writer (model -> self-contained folder).
- `atomic`, `safeload`, `paths`: atomic writes, pickle-free reading, outputs that never overwrite inputs.
"""
