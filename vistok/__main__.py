"""`python -m vistok ...` is the `vistok` command; under torchrun (`torchrun --nproc_per_node=N -m vistok sample
--samples 50000 ...`) every rank runs it and `sample` shards the per-image seeds over the ranks."""

import sys

from vistok.cli import main

sys.exit(main())
