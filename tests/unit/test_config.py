"""ServiceConfig defaults and validation, env parsing, and the CLI's flag/env/default precedence."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sam2_service.cli import build_parser, config_from_args
from sam2_service.daemon.config import (
    DEFAULT_SOCKET,
    MODELS,
    ServiceConfig,
    default_checkpoint,
    default_log_file,
    parse_env_value,
    settings,
)

MiB = 2**20


def field(name: str) -> dataclasses.Field:
    return next(f for f in settings() if f.name == name)


def from_cli(argv, env=None):
    return config_from_args(build_parser().parse_args(["serve", *argv]), env=env or {})


# --- defaults and validation ------------------------------------------------------------


def test_defaults():
    c = ServiceConfig()
    assert c.socket_path == "/tmp/wcc-sam2.sock" == DEFAULT_SOCKET
    assert c.model == "tiny"
    assert c.device == "auto"
    assert c.precision == "auto"
    assert c.dummy_weights is False
    assert c.max_frame_bytes == 64 * MiB
    assert c.max_image_pixels == 40_000_000
    assert c.max_points == 64
    assert c.log_max_bytes == 10 * MiB
    assert c.log_backup_count == 3
    assert c.log_level == "INFO"
    assert c.checkpoint is None and c.log_file is None
    assert c.model_config == "configs/sam2.1/sam2.1_hiera_t.yaml"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ServiceConfig().model = "large"  # type: ignore[misc]


@pytest.mark.parametrize("model", ["huge", "", "Tiny", "hiera_t"])
def test_invalid_model(model):
    with pytest.raises(ValueError, match="model"):
        ServiceConfig(model=model)


@pytest.mark.parametrize("model", list(MODELS))
def test_valid_models(model):
    assert ServiceConfig(model=model).model == model


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0 ", "tpu"])
def test_invalid_device(device):
    with pytest.raises(ValueError, match="device"):
        ServiceConfig(device=device)


@pytest.mark.parametrize("device", ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices(device):
    assert ServiceConfig(device=device).device == device


def test_invalid_precision():
    with pytest.raises(ValueError, match="precision"):
        ServiceConfig(precision="float16")


@pytest.mark.parametrize("name", ["log_max_bytes", "max_frame_bytes", "max_image_pixels", "max_queue",
                                  "request_timeout", "idle_timeout", "shutdown_timeout",
                                  "max_points"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_must_be_positive(name, value):
    with pytest.raises(ValueError, match=name):
        ServiceConfig(**{name: value})


# --- paths ------------------------------------------------------------------------------


def test_default_log_file_darwin():
    home = "/Users/someone"
    assert default_log_file("darwin", {"HOME": home}) == Path(
        "/Users/someone/Library/Logs/WCCOverlay/sam2-service.log")


def test_default_log_file_darwin_ignores_xdg():
    path = default_log_file("darwin", {"HOME": "/Users/a", "XDG_STATE_HOME": "/x"})
    assert path == Path("/Users/a/Library/Logs/WCCOverlay/sam2-service.log")


def test_default_log_file_linux_with_xdg_state_home():
    path = default_log_file("linux", {"HOME": "/home/u", "XDG_STATE_HOME": "/var/state"})
    assert path == Path("/var/state/sam2-service/sam2-service.log")


def test_default_log_file_linux_without_xdg_state_home():
    path = default_log_file("linux", {"HOME": "/home/u"})
    assert path == Path("/home/u/.local/state/sam2-service/sam2-service.log")


def test_default_log_file_linux_empty_xdg_state_home_falls_back():
    path = default_log_file("linux", {"HOME": "/home/u", "XDG_STATE_HOME": ""})
    assert path == Path("/home/u/.local/state/sam2-service/sam2-service.log")


def test_checkpoint_path_default_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ServiceConfig().checkpoint_path
    assert path == tmp_path / "checkpoints" / "sam2.1_hiera_tiny.pt"
    assert path.is_absolute()


def test_checkpoint_path_follows_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ServiceConfig(model="large").checkpoint_path == (
        tmp_path / "checkpoints" / "sam2.1_hiera_large.pt")


def test_checkpoint_path_explicit_relative_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = ServiceConfig(checkpoint=Path("w/my.pt"))
    assert c.checkpoint_path == tmp_path / "w" / "my.pt"


def test_default_checkpoint_with_root(tmp_path):
    assert default_checkpoint("small", tmp_path) == tmp_path / "checkpoints" / "sam2.1_hiera_small.pt"


def test_log_path_explicit(tmp_path):
    assert ServiceConfig(log_file=tmp_path / "x.log").log_path == tmp_path / "x.log"


def test_log_path_default_uses_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    expected = default_log_file()
    assert ServiceConfig().log_path == expected.absolute()
    assert expected.name == "sam2-service.log"


# --- parse_env_value --------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "Yes", "on", " 1 "])
def test_env_bool_true(raw):
    assert parse_env_value(field("dummy_weights"), raw) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "OFF", ""])
def test_env_bool_false(raw):
    assert parse_env_value(field("dummy_weights"), raw) is False


@pytest.mark.parametrize("raw", ["2", "yess", "enabled", "-1"])
def test_env_bool_invalid_names_variable(raw):
    with pytest.raises(ValueError, match="SAM2_SERVICE_DUMMY_WEIGHTS"):
        parse_env_value(field("dummy_weights"), raw)


def test_env_bool_invalid_lists_the_accepted_words_and_each_one_parses():
    with pytest.raises(ValueError) as info:
        parse_env_value(field("dummy_weights"), "ture")
    message = str(info.value)
    assert message.startswith("SAM2_SERVICE_DUMMY_WEIGHTS='ture' is not a valid bool: use ")
    pairs = re.findall(r"(\w+)/(\w+)", message)
    assert len(pairs) == 4, message
    for true_word, false_word in pairs:
        assert parse_env_value(field("dummy_weights"), true_word) is True
        assert parse_env_value(field("dummy_weights"), false_word) is False


@pytest.mark.parametrize("name, raw, hint", [("max_frame_bytes", "abc", "whole number"),
                                             ("shutdown_timeout", "soon", "number")])
def test_env_number_invalid_says_what_to_write(name, raw, hint):
    with pytest.raises(ValueError, match=f"is not a valid .*: use a {hint}, e.g. "):
        parse_env_value(field(name), raw)


def test_env_int_with_scale():
    assert parse_env_value(field("max_frame_bytes"), "2") == 2 * MiB
    assert parse_env_value(field("log_max_bytes"), "5") == 5 * MiB


def test_env_int_without_scale():
    assert parse_env_value(field("max_points"), "12") == 12
    assert parse_env_value(field("max_image_pixels"), "1000") == 1000


@pytest.mark.parametrize("raw", ["abc", "2.5", "", "1e3"])
def test_env_int_invalid_names_variable(raw):
    with pytest.raises(ValueError, match="SAM2_SERVICE_MAX_FRAME_MB"):
        parse_env_value(field("max_frame_bytes"), raw)


def test_env_float():
    assert parse_env_value(field("shutdown_timeout"), "2.5") == 2.5
    with pytest.raises(ValueError, match="SAM2_SERVICE_SHUTDOWN_TIMEOUT"):
        parse_env_value(field("shutdown_timeout"), "soon")


def test_env_str_and_path():
    assert parse_env_value(field("socket_path"), "/run/x.sock") == "/run/x.sock"
    assert parse_env_value(field("checkpoint"), "/w/c.pt") == Path("/w/c.pt")


def test_every_setting_has_flag_env_help():
    for f in settings():
        assert f.metadata["flag"].startswith("--")
        assert f.metadata["env"].startswith("SAM2_SERVICE_")
        assert f.metadata["help"]


# --- CLI: flag > env > default ----------------------------------------------------------


def test_cli_defaults_with_empty_env():
    assert from_cli([]) == ServiceConfig()


def test_cli_env_beats_default():
    c = from_cli([], env={"SAM2_SERVICE_MODEL": "small", "SAM2_SERVICE_SOCKET": "/tmp/e.sock"})
    assert c.model == "small"
    assert c.socket_path == "/tmp/e.sock"


def test_cli_flag_beats_env():
    c = from_cli(["--model", "large", "--socket", "/tmp/f.sock"],
                 env={"SAM2_SERVICE_MODEL": "small", "SAM2_SERVICE_SOCKET": "/tmp/e.sock"})
    assert c.model == "large"
    assert c.socket_path == "/tmp/f.sock"


def test_cli_flag_and_env_for_different_settings_combine():
    c = from_cli(["--device", "cpu"], env={"SAM2_SERVICE_MAX_POINTS": "5"})
    assert c.device == "cpu"
    assert c.max_points == 5


def test_cli_dummy_weights_flag():
    assert from_cli(["--dummy-weights"]).dummy_weights is True
    assert from_cli([]).dummy_weights is False


def test_cli_dummy_weights_env():
    assert from_cli([], env={"SAM2_SERVICE_DUMMY_WEIGHTS": "1"}).dummy_weights is True
    assert from_cli([], env={"SAM2_SERVICE_DUMMY_WEIGHTS": "0"}).dummy_weights is False


def test_cli_max_frame_mb_scaled():
    assert from_cli(["--max-frame-mb", "8"]).max_frame_bytes == 8 * MiB


def test_cli_max_frame_mb_flag_beats_env():
    c = from_cli(["--max-frame-mb", "8"], env={"SAM2_SERVICE_MAX_FRAME_MB": "2"})
    assert c.max_frame_bytes == 8 * MiB
    assert from_cli([], env={"SAM2_SERVICE_MAX_FRAME_MB": "2"}).max_frame_bytes == 2 * MiB


def test_cli_log_max_mb_scaled():
    assert from_cli(["--log-max-mb", "3"]).log_max_bytes == 3 * MiB


def test_cli_paths():
    c = from_cli(["--checkpoint", "/w/c.pt", "--log-file", "/l/s.log"])
    assert c.checkpoint == Path("/w/c.pt")
    assert c.log_file == Path("/l/s.log")


def test_cli_invalid_env_raises_naming_variable():
    with pytest.raises(ValueError, match="SAM2_SERVICE_MAX_POINTS"):
        from_cli([], env={"SAM2_SERVICE_MAX_POINTS": "many"})


def test_cli_invalid_device_flag_raises():
    with pytest.raises(ValueError, match="device"):
        from_cli(["--device", "gpu"])


def test_cli_invalid_model_env_raises():
    with pytest.raises(ValueError, match="model"):
        from_cli([], env={"SAM2_SERVICE_MODEL": "huge"})


def test_cli_model_choices_enforced_by_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--model", "huge"])
    assert "--model" in capsys.readouterr().err


def test_cli_zero_max_frame_mb_rejected():
    with pytest.raises(ValueError, match="max_frame_bytes"):
        from_cli(["--max-frame-mb", "0"])


def test_cli_segment_parser_bbox_and_points():
    ns = build_parser().parse_args(["segment", "--image", "x.png", "--bbox", "1,2,3,4",
                                    "--point", "5,6", "--point", "7,8,0"])
    assert ns.bbox == [1.0, 2.0, 3.0, 4.0]
    assert ns.point == [[5.0, 6.0], [7.0, 8.0, 0.0]]
    assert ns.image == Path("x.png")


@pytest.mark.parametrize("argv", [["--bbox", "1,2,3"], ["--bbox", "a,b,c,d"], ["--point", "1"]])
def test_cli_segment_parser_bad_geometry(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "--image", "x.png", *argv])
    capsys.readouterr()


def test_device_with_trailing_newline_rejected():
    with pytest.raises(ValueError, match="device"):
        ServiceConfig(device="cpu\n")


def test_cli_warmup_is_on_by_default_and_no_warmup_turns_it_off():
    assert from_cli([]).warmup is True
    assert from_cli(["--no-warmup"]).warmup is False
    assert from_cli([], env={"SAM2_SERVICE_WARMUP": "0"}).warmup is False
    # the flag beats the environment variable
    assert from_cli(["--no-warmup"], env={"SAM2_SERVICE_WARMUP": "1"}).warmup is False


def test_pixel_ceiling_cannot_exceed_pillows_bomb_limit():
    from PIL import Image

    from sam2_service.daemon.config import PILLOW_BOMB_PIXELS

    assert PILLOW_BOMB_PIXELS == 2 * Image.MAX_IMAGE_PIXELS
    ServiceConfig(max_image_pixels=PILLOW_BOMB_PIXELS)
    with pytest.raises(ValueError, match="at most 178956970"):
        ServiceConfig(max_image_pixels=PILLOW_BOMB_PIXELS + 1)
