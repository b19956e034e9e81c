"""`vistok em-view` / vistok.em.view.serve: the raw volume and its segmentation served through neuroglancer's Python
server on loopback, checked by fetching the layers' voxels back over HTTP the way the browser does (the server's
/neuroglancer/info and /neuroglancer/npz chunk URLs) and comparing them with the arrays written."""

from __future__ import annotations

import json
import urllib.request
import zlib
from io import BytesIO

import numpy as np
import pytest

neuroglancer = pytest.importorskip("neuroglancer")

from vistok import cli  # noqa: E402
from vistok.em.view import serve  # noqa: E402
from vistok.errors import VistokError  # noqa: E402

SHAPE = (5, 6, 7)  # (z, y, x), all different so a transposed layer cannot pass


@pytest.fixture(autouse=True)
def _stop_server():
    yield
    neuroglancer.server.stop()  # every test leaves no server (and no port) behind


@pytest.fixture
def volumes(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, SHAPE).astype(np.uint8)
    seg = rng.integers(0, 5, SHAPE).astype(np.int32) * 1_000_003  # int32, as gala's neuron_ids; big ids
    np.save(tmp_path / "raw.npy", raw)
    with h5py.File(tmp_path / "seg.h5", "w") as f:
        f["ids"] = seg
    return raw, seg, tmp_path


def layer(viewer, name: str) -> tuple[dict, np.ndarray]:
    """(info, voxels at full resolution) of a served layer, over HTTP from the server that serves the browser."""
    source = viewer.state.layers[name].source[0].url
    assert source.startswith("python://volume/")
    key, base = source.removeprefix("python://volume/"), neuroglancer.server.get_server_url()
    info = json.loads(urllib.request.urlopen(f"{base}/neuroglancer/info/{key}", timeout=30).read())
    end = ",".join(str(n) for n in info["shape"])
    chunk = urllib.request.urlopen(f"{base}/neuroglancer/npz/{key}/1,1,1/0,0,0/{end}", timeout=30).read()
    return info, np.load(BytesIO(zlib.decompress(chunk)))


def test_serve_holds_exactly_the_raw_and_segmentation(volumes) -> None:
    raw, seg, folder = volumes
    viewer, url = serve(str(folder / "raw.npy"), f"{folder / 'seg.h5'}:ids", voxel_size=(40, 4, 2))
    assert url.startswith("http://127.0.0.1:") and url == viewer.get_viewer_url()
    raw_info, raw_served = layer(viewer, "raw")
    seg_info, seg_served = layer(viewer, "segmentation")
    assert raw_info["volumeType"] == "image" and seg_info["volumeType"] == "segmentation"
    assert raw_served.dtype == np.uint8 and np.array_equal(raw_served, raw)
    assert seg_served.dtype == np.uint32 and np.array_equal(seg_served, seg)  # int32 ids as neuroglancer's uint32
    for info in (raw_info, seg_info):
        assert info["shape"] == list(SHAPE)
        space = info["coordinateSpace"]  # neuroglancer stores scales in metres, in the array's axis order
        assert list(space) == ["z", "y", "x"]
        assert [s for s, _ in space.values()] == pytest.approx([40e-9, 4e-9, 2e-9])
        assert {u for _, u in space.values()} == {"m"}
    # a window away from the origin is the same window of the array (chunks are read lazily from the files)
    key = viewer.state.layers["raw"].source[0].url.removeprefix("python://volume/")
    part = urllib.request.urlopen(f"{neuroglancer.server.get_server_url()}/neuroglancer/npz/{key}/1,1,1/1,2,3/4,5,7",
                                  timeout=30).read()
    assert np.array_equal(np.load(BytesIO(zlib.decompress(part))), raw[1:4, 2:5, 3:7])


def test_voxel_size_defaults_to_the_resolution_attribute_then_1nm(volumes) -> None:
    import h5py

    raw, seg, folder = volumes
    viewer, _ = serve(raw, seg)  # numpy arrays from Python; nothing stored: 1 nm
    assert [s for s, _ in layer(viewer, "raw")[0]["coordinateSpace"].values()] == pytest.approx([1e-9] * 3)
    with h5py.File(folder / "seg.h5", "a") as f:
        f["ids"].attrs["resolution"] = [30, 8, 8]  # CREMI's convention: (z, y, x) in nm
    viewer, _ = serve(raw, f"{folder / 'seg.h5'}:ids")
    assert [s for s, _ in layer(viewer, "segmentation")[0]["coordinateSpace"].values()] == pytest.approx(
        [30e-9, 8e-9, 8e-9])
    viewer, _ = serve(raw, f"{folder / 'seg.h5'}:ids", voxel_size=(5, 5, 5))  # the flag wins
    assert [s for s, _ in layer(viewer, "raw")[0]["coordinateSpace"].values()] == pytest.approx([5e-9] * 3)


@pytest.mark.parametrize("case, message", [
    ("shape", "has shape (5, 6, 7) but segmentation"),
    ("float", "it must hold integer labels"),
    ("missing", "does not exist"),
    ("voxel", "--voxel-size '4,4' must be three positive sizes"),
    ("port", "port must be an integer"),
])
def test_bad_inputs_are_one_line_before_serving(volumes, capsys, case, message) -> None:
    raw, seg, folder = volumes
    np.save(folder / "short.npy", seg[:4].astype(np.uint32))
    np.save(folder / "float.npy", seg.astype(np.float32))
    seg_arg = {"shape": folder / "short.npy", "float": folder / "float.npy", "missing": folder / "nope.h5"}.get(
        case, f"{folder / 'seg.h5'}:ids")
    flags = {"voxel": ["--voxel-size", "4,4"], "port": ["--port", "70000"]}.get(case, [])
    assert cli.main(["em-view", str(folder / "raw.npy"), str(seg_arg), *flags]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("vistok em-view: error: ") and message in err and err.count("\n") == 1
    assert not neuroglancer.server.is_server_running()  # refused before the server started


def test_python_api_refuses_a_shape_mismatch(volumes) -> None:
    raw, seg, _ = volumes
    with pytest.raises(VistokError, match=r"raw .* has shape \(5, 6, 7\) but segmentation .* has \(5, 6, 6\)"):
        serve(raw, seg[..., :6])
    assert not neuroglancer.server.is_server_running()


def test_cli_prints_the_url_and_serves_until_ctrl_c(volumes, capsys, monkeypatch) -> None:
    raw, _, folder = volumes
    seen = {}

    def interrupt(_seconds):  # the moment the command waits: it serves now; then the user presses Ctrl-C
        seen["printed"] = capsys.readouterr().out
        seen["running"] = neuroglancer.server.is_server_running()
        seen["url"] = neuroglancer.server.get_server_url()
        raise KeyboardInterrupt

    monkeypatch.setattr("vistok.api.em.time.sleep", interrupt)
    assert cli.main(["em-view", str(folder / "raw.npy"), f"{folder / 'seg.h5'}:ids", "--voxel-size", "40,4,4"]) == 0
    assert seen["running"] and seen["url"].startswith("http://127.0.0.1:")
    lines = seen["printed"].splitlines()
    assert len(lines) == 1 and lines[0].startswith(seen["url"] + "/v/")
    assert not neuroglancer.server.is_server_running()  # Ctrl-C stopped it


def test_zarr_resolutions_are_read_and_two_that_differ_are_refused(volumes) -> None:
    import zarr

    raw, seg, folder = volumes
    for name, volume, resolution in (("raw", raw, [40, 4, 4]), ("ids", seg.astype(np.uint64), [40, 4, 4])):
        array = zarr.open_array(str(folder / "v.zarr" / name), mode="w", shape=volume.shape, dtype=volume.dtype)
        array[...], array.attrs["resolution"] = volume, resolution
    viewer, _ = serve(f"{folder / 'v.zarr'}:raw", f"{folder / 'v.zarr'}:ids")
    info, served = layer(viewer, "segmentation")
    assert [s for s, _ in info["coordinateSpace"].values()] == pytest.approx([40e-9, 4e-9, 4e-9])
    assert served.dtype == np.uint64 and np.array_equal(served, seg)
    zarr.open_array(str(folder / "v.zarr" / "ids"), mode="r+").attrs["resolution"] = [30, 4, 4]
    with pytest.raises(VistokError, match=r"resolution \(40.0, 4.0, 4.0\) but .* has \(30.0, 4.0, 4.0\); pass "
                                          r"--voxel-size"):
        serve(f"{folder / 'v.zarr'}:raw", f"{folder / 'v.zarr'}:ids")
    zarr.open_array(str(folder / "v.zarr" / "ids"), mode="r+").attrs["resolution"] = [4, 4]
    with pytest.raises(VistokError, match="'resolution' attribute .* must be three positive numbers"):
        serve(raw, f"{folder / 'v.zarr'}:ids")
    viewer, _ = serve(raw, f"{folder / 'v.zarr'}:ids", voxel_size=(8, 8, 8))  # the flag overrides a bad attribute
    assert [s for s, _ in layer(viewer, "raw")[0]["coordinateSpace"].values()] == pytest.approx([8e-9] * 3)


def test_a_port_in_use_is_one_line(volumes, capsys) -> None:
    import socket

    _, _, folder = volumes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["em-view", str(folder / "raw.npy"), f"{folder / 'seg.h5'}:ids", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err == f"vistok em-view: error: cannot serve on 127.0.0.1:{port} (Address already in use); choose " \
                  "another --port or --bind-address\n"
