"""Look at a segmentation: serve a raw EM volume and its neuron ids to a browser through neuroglancer's Python
integration (an image layer and a segmentation layer over the same (z, y, x) voxel grid).

Neuroglancer (Maitin-Shepard et al., github.com/google/neuroglancer) is how connectomics looks at volumes; its
Python server hands the browser chunks of local arrays on demand. Volumes are opened with vistok.em.volumes.Volume
(metadata only, the same numeric-only checks as every other reader), and chunks are read as the viewer asks for
them, so a volume larger than memory is served without being loaded (a segment's 3D mesh, which neuroglancer
computes from the whole segmentation, is the exception).

    viewer, url = serve("raw.h5:raw", "seg.zarr:ids", voxel_size=(40, 4, 4))   # the URL to open in a browser
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vistok.checks import int_arg
from vistok.em.volumes import Volume, VolumeRef
from vistok.errors import ArgumentTypeError, ArgumentValueError, VistokError

Source = str | Path | VolumeRef | np.ndarray  # a FILE[:DATASET] volume, or a (z, y, x) array from Python
AXES = ("z", "y", "x")  # vistok's volume axis order, also the viewer's dimension names


class _Chunks:
    """A Volume as neuroglancer's LocalVolume reads it (`shape`, `dtype`, `[slices]`), cast to a dtype neuroglancer
    draws: signed or boolean labels to unsigned ids of their width, 64-bit raw intensities to float32."""

    def __init__(self, volume: Volume, dtype: np.dtype) -> None:
        self.volume, self.shape, self.dtype = volume, tuple(volume.shape), np.dtype(dtype)

    def __getitem__(self, window: tuple[slice, slice, slice]) -> np.ndarray:
        return self.volume.read(window).astype(self.dtype, copy=False)

    def transpose(self) -> np.ndarray:
        """(x, y, z): the whole volume, as neuroglancer's mesh generator reads it."""
        return self[(slice(None),) * 3].T


def _label_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    return np.dtype(f"uint{8 * dtype.itemsize}") if dtype.kind == "i" else dtype


def _image_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype.itemsize == 8 or dtype.kind == "b" else dtype


def _open(volume: Source, name: str) -> Volume:
    if isinstance(volume, np.ndarray):
        return Volume.of(volume, name)
    if not isinstance(volume, (str, Path, VolumeRef)):
        raise ArgumentTypeError(f"{name} must be a FILE[:DATASET] volume or a 3D numpy array, got "
                                f"{type(volume).__name__}")
    return Volume(volume)


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """'Z,Y,X' in nm -> three positive finite floats (e.g. '40,4,4' for serial-section TEM)."""
    try:
        sizes = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ArgumentValueError(f"--voxel-size {text!r} must be three positive sizes Z,Y,X in nm, e.g. 40,4,4")
    return sizes  # type: ignore[return-value]


def _check_voxel_size(value: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        sizes = tuple(float(v) for v in value if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)))
    except TypeError:
        sizes = ()
    if len(sizes) != 3 or len(sizes) != len(value) or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ArgumentValueError(f"{name} must be three positive numbers (Z, Y, X) in nm, got {value!r}")
    return sizes  # type: ignore[return-value]


def stored_resolution(volume: Volume) -> tuple[float, float, float] | None:
    """The (z, y, x) voxel size in nm stored as the dataset's `resolution` attribute (the CREMI convention in HDF5
    and zarr), if any."""
    attrs = getattr(volume._dataset(), "attrs", None)
    if attrs is None or "resolution" not in attrs:
        return None
    value = np.asarray(attrs["resolution"]).tolist()
    return _check_voxel_size(value if isinstance(value, list) else [value],
                             f"{volume.ref}'s 'resolution' attribute (override it with --voxel-size Z,Y,X)")


def _voxel_size(voxel_size: Sequence[float] | None, raw: Volume, seg: Volume) -> tuple[float, float, float]:
    """The flag's, else the raw volume's stored resolution, else the segmentation's, else 1 nm; two stored
    resolutions that differ are refused (one of them is wrong and the overlay would be too)."""
    if voxel_size is not None:
        return _check_voxel_size(voxel_size, "voxel_size")
    stored = [(v.ref, r) for v in (raw, seg) if (r := stored_resolution(v)) is not None]
    if len(stored) == 2 and stored[0][1] != stored[1][1]:
        raise VistokError(f"{stored[0][0]} has resolution {stored[0][1]} but {stored[1][0]} has {stored[1][1]}; "
                          "pass --voxel-size Z,Y,X to choose")
    return stored[0][1] if stored else (1.0, 1.0, 1.0)


def open_pair(raw: Source, seg: Source) -> tuple[Volume, Volume]:
    """Open RAW and SEG (metadata only) and refuse what cannot be overlaid: a segmentation that is not integer
    labels, or two different shapes."""
    raw_vol, seg_vol = _open(raw, "raw"), _open(seg, "seg")
    if seg_vol.dtype.kind not in "iub":
        raise VistokError(f"the segmentation {seg_vol.ref} has dtype {seg_vol.dtype}; it must hold integer labels "
                          "(neuron ids), e.g. the uint32 output of vistok em-segment")
    if tuple(raw_vol.shape) != tuple(seg_vol.shape):
        raise VistokError(f"raw {raw_vol.ref} has shape {tuple(raw_vol.shape)} but segmentation {seg_vol.ref} has "
                          f"{tuple(seg_vol.shape)}; pass a segmentation of the same (z, y, x) volume")
    return raw_vol, seg_vol


def serve(raw: Source, seg: Source, voxel_size: Sequence[float] | None = None, bind_address: str = "127.0.0.1",
          port: int = 0) -> tuple[object, str]:
    """Serve RAW as an image layer and SEG as a segmentation layer; returns (viewer, url). The server runs in a
    background thread of this process until `neuroglancer.server.stop()` (or the process ends). Every check runs
    before the server starts. If a neuroglancer server already runs in this process, the viewer joins it (its
    address stays as it was)."""
    if not isinstance(bind_address, str) or not bind_address:
        raise ArgumentTypeError(f"bind_address must be a host address such as '127.0.0.1', got {bind_address!r}")
    port = int_arg(port, "port", 0, 65535, " (0: any free port)")
    raw_vol, seg_vol = open_pair(raw, seg)
    scales = _voxel_size(voxel_size, raw_vol, seg_vol)
    try:
        import neuroglancer
    except ImportError:
        raise VistokError("em-view needs the neuroglancer package: pip install neuroglancer "
                          "(or 'vistok[em]')") from None

    neuroglancer.set_server_bind_address(bind_address, port)
    try:
        neuroglancer.server.start()
    except OSError as err:
        raise VistokError(f"cannot serve on {bind_address}:{port} ({err.strerror or err}); choose another --port or "
                          "--bind-address") from None
    space = neuroglancer.CoordinateSpace(names=list(AXES), units="nm", scales=list(scales))
    viewer = neuroglancer.Viewer()
    with viewer.txn() as state:
        state.dimensions = space
        state.display_dimensions = list(reversed(AXES))  # x, y, z: the main panel shows the sections (y, x planes)
        state.layers["raw"] = neuroglancer.ImageLayer(source=neuroglancer.LocalVolume(
            _Chunks(raw_vol, _image_dtype(raw_vol.dtype)), dimensions=space, volume_type="image"))
        state.layers["segmentation"] = neuroglancer.SegmentationLayer(source=neuroglancer.LocalVolume(
            _Chunks(seg_vol, _label_dtype(seg_vol.dtype)), dimensions=space, volume_type="segmentation"))
        state.position = [n / 2 for n in raw_vol.shape]  # the volume's centre, in voxels
    return viewer, viewer.get_viewer_url()
