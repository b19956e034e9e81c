"""Export I/O: where a model comes from and how it is written, apart from training (`vistok.engine`).

- `sources`: a source (shipped name, folder, `hf://org/repo[@rev]`) -> a local folder, resolved once; an hf:// source
  is pinned to the commit it resolved to (`Source.pinned`), which outputs record.
- `checks`: config.json read once and checked (size, types, integers, paths inside the export), and a meta-device
  build against the weights file's header, before anything is allocated.
- `exports`: the family table (name -> module, config class, model class), the one loader (`open_export`,
  `load_model`) and the one writer (`write_export`: atomic, self-contained, relative paths only).
- `atomic`, `safeload`, `paths`, `lock`: atomic writes, pickle-free reading, outputs that never overwrite inputs, one
  writer per output or run folder.

Layering (tests/test_layering.py reads every file's imports and enforces it; lowest first, each layer imports only
its own or lower ones, lazily or not):

    errors, checks, lazy  <-  config, io, flow, seeding, progress, viz  <-  engine, data  <-  modules, metrics
      <-  tokenizers, em  <-  generators  <-  registry  <-  api, demo  <-  cli, em.cli, convert

This package imports nothing from engine, api or cli; it reaches model classes only by module name through the family
table (importlib, on first use), which is what lets every layer above load and write exports through it.
"""
