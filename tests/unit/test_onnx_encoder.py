"""``--backend onnxruntime`` without exporting anything: the setting, the start-up checks,
the cache key and the cache's files (a fake export writes bytes). The export, the session and
parity with eager SAM2 are in tests/integration/test_onnx_backend.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sam2_service.cli import build_parser, config_from_args
from sam2_service.daemon import onnx_encoder
from sam2_service.daemon.config import ServiceConfig, StartupError
from sam2_service.daemon.onnx_encoder import (
    CACHE_FOLDER,
    backend_device,
    cache_dirs,
    cache_name,
    find_or_export,
)


def from_cli(argv, env=None):
    return config_from_args(build_parser().parse_args(["serve", *argv]), env=env or {})


# --- the setting -------------------------------------------------------------------------


def test_backend_defaults_to_torch():
    assert ServiceConfig().backend == "torch"
    assert from_cli([]).backend == "torch"


def test_backend_from_flag_and_env_flag_wins():
    assert from_cli(["--backend", "onnxruntime"]).backend == "onnxruntime"
    assert from_cli([], env={"SAM2_SERVICE_BACKEND": "onnxruntime"}).backend == "onnxruntime"
    assert from_cli(["--backend", "torch"], env={"SAM2_SERVICE_BACKEND": "onnxruntime"}
                    ).backend == "torch"


def test_unknown_backend_is_refused(capsys):
    with pytest.raises(SystemExit):
        from_cli(["--backend", "tensorrt"])
    assert "--backend" in capsys.readouterr().err
    with pytest.raises(ValueError, match="backend"):
        from_cli([], env={"SAM2_SERVICE_BACKEND": "ort"})
    with pytest.raises(ValueError, match="backend"):
        ServiceConfig(backend="ONNXRUNTIME")  # type: ignore[arg-type]


# --- start-up checks, before the model is built ------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_torch_backend_resolves_its_own_device(device):
    assert backend_device(ServiceConfig(device=device), device) == device


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_onnxruntime_runs_on_the_cpu(device):
    assert backend_device(ServiceConfig(device=device, backend="onnxruntime"), device) == "cpu"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_onnxruntime_refuses_another_device(device):
    with pytest.raises(StartupError, match="use --device cpu"):
        backend_device(ServiceConfig(device=device, backend="onnxruntime"), device)


def test_onnxruntime_checks_each_entry_of_a_device_list():
    cfg = ServiceConfig(device="cpu,cuda:1", backend="onnxruntime")
    assert backend_device(cfg, "cpu") == "cpu"
    with pytest.raises(StartupError, match="use --device cpu"):
        backend_device(cfg, "cuda:1")


def test_onnxruntime_refuses_bfloat16():
    with pytest.raises(StartupError, match="--precision float32"):
        backend_device(ServiceConfig(device="cpu", precision="bfloat16", backend="onnxruntime"),
                       "cpu")
    assert backend_device(ServiceConfig(precision="float32", backend="onnxruntime"), "auto") == "cpu"


def test_onnxruntime_not_installed_says_how_to_install(monkeypatch):
    real = onnx_encoder.importlib.util.find_spec
    monkeypatch.setattr(onnx_encoder.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(StartupError, match=r"onnxruntime is not installed: run `make install`"):
        backend_device(ServiceConfig(backend="onnxruntime"), "auto")


def test_engine_load_refuses_cuda_before_looking_for_cuda():
    """The check runs before the device is resolved: the message is the backend's, on a
    machine with or without CUDA, and no model is built."""
    pytest.importorskip("torch")
    from sam2_service.daemon.engine import Sam2Engine

    with pytest.raises(StartupError, match="--backend onnxruntime runs on the CPU only"):
        Sam2Engine.load(ServiceConfig(device="cuda", backend="onnxruntime", dummy_weights=True))


# --- the cache key -----------------------------------------------------------------------


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt" / "sam2.1_hiera_tiny.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights")
    return path


def test_cache_name_is_stable_and_keyed_by_the_checkpoint(ckpt):
    config = ServiceConfig(checkpoint=ckpt, backend="onnxruntime")
    name = cache_name(config)
    assert name == cache_name(config) and name.endswith(".onnx") and "tiny" in name
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = cache_name(config)
    assert touched != name
    ckpt.write_bytes(b"weights, longer")  # size (and mtime)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_name(config) not in (name, touched)
    now = cache_name(config)
    copy = ckpt.with_name("copy.pt")
    copy.write_bytes(ckpt.read_bytes())
    os.utime(copy, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns))
    assert cache_name(ServiceConfig(checkpoint=copy, backend="onnxruntime")) != now  # the path
    assert cache_name(ServiceConfig(checkpoint=ckpt, model="small")) != now  # the model


@pytest.mark.parametrize("dist", ["torch", "sam2", "onnx", "onnxruntime", "service"])
def test_cache_name_is_keyed_by_the_versions(ckpt, monkeypatch, dist):
    config = ServiceConfig(checkpoint=ckpt)
    before = cache_name(config)
    if dist == "service":
        monkeypatch.setattr(onnx_encoder, "__version__", "99.0")
    else:
        real = onnx_encoder._version
        monkeypatch.setattr(onnx_encoder, "_version", lambda d: "99.0" if d == dist else real(d))
    assert cache_name(config) != before


def test_cache_dirs_next_to_the_checkpoint_then_xdg(ckpt, tmp_path):
    assert cache_dirs(ckpt, {"HOME": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == [
        ckpt.parent / CACHE_FOLDER, Path("/x/sam2-service/onnx")]
    assert cache_dirs(ckpt, {"HOME": str(tmp_path)})[1] == tmp_path / ".cache/sam2-service/onnx"


# --- the cache's files (a fake export) -----------------------------------------------------


class FakeExport:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[Path] = []
        self.fail = fail

    def __call__(self, path: Path) -> None:
        self.calls.append(path)
        path.write_bytes(b"half a model")
        if self.fail:
            raise RuntimeError("exporter crashed")
        path.write_bytes(b"model")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_miss_exports_under_a_temporary_name_then_a_hit_does_not(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    export = FakeExport()
    path, hit = find_or_export("enc.onnx", dirs, export)
    assert (path, hit) == (dirs[0] / "enc.onnx", False)
    assert path.read_bytes() == b"model" and listing(dirs[0]) == ["enc.onnx"]
    assert export.calls[0].parent == dirs[0] and export.calls[0].name != "enc.onnx"
    assert not dirs[1].exists()
    assert find_or_export("enc.onnx", dirs, export) == (path, True)
    assert len(export.calls) == 1


def test_failed_export_leaves_nothing(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(RuntimeError, match="exporter crashed"):
        find_or_export("enc.onnx", dirs, FakeExport(fail=True))
    assert listing(dirs[0]) == [] and not dirs[1].exists()


def test_unwritable_checkpoint_folder_falls_back_then_finds_it_there(tmp_path):
    """A file where the cache folder should be (a read-only folder to root, who runs these
    tests in CI) makes the first folder unusable."""
    dirs = [tmp_path / "ckpt" / CACHE_FOLDER, tmp_path / "xdg"]
    dirs[0].parent.mkdir()
    dirs[0].write_text("not a folder")
    path, hit = find_or_export("enc.onnx", dirs, FakeExport())
    assert (path, hit) == (dirs[1] / "enc.onnx", False)
    assert find_or_export("enc.onnx", dirs, FakeExport()) == (path, True)


def test_no_writable_folder_is_a_startup_error(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.write_text("not a folder")
    with pytest.raises(StartupError, match="no folder to cache the ONNX encoder in"):
        find_or_export("enc.onnx", dirs, FakeExport())
