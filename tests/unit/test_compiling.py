"""``--compile``: its setting, what it resolves to per device, and a failed compile as a
start-up error (no compilation here: tests/integration/test_compile.py compiles)."""

from __future__ import annotations

import types
from typing import get_args

import pytest

from sam2_service.cli import build_parser, config_from_args
from sam2_service.daemon.config import Compile, ServiceConfig, StartupError
from sam2_service.daemon.inference import compiling


def from_cli(argv, env=None):
    return config_from_args(build_parser().parse_args(["serve", *argv]), env=env or {})


def test_values_and_default_off():
    assert get_args(Compile) == ("off", "decoder", "all", "auto")
    assert ServiceConfig().compile == "off"


def test_flag_and_environment_variable():
    assert from_cli(["--compile", "decoder"]).compile == "decoder"
    assert from_cli([], {"SAM2_SERVICE_COMPILE": "all"}).compile == "all"
    assert from_cli(["--compile", "off"], {"SAM2_SERVICE_COMPILE": "all"}).compile == "off"


def test_parser_refuses_other_values(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--compile", "max-autotune"])
    assert "--compile" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["on", "", "Decoder", "reduce-overhead"])
def test_invalid_value(value):
    with pytest.raises(ValueError, match="compile"):
        ServiceConfig(compile=value)


@pytest.mark.parametrize("value", ["decoder", "all"])
def test_compiling_needs_the_warmup(value):
    with pytest.raises(ValueError, match="--no-warmup"):
        ServiceConfig(compile=value, warmup=False)
    assert ServiceConfig(compile="auto", warmup=False).compile == "auto"
    assert ServiceConfig(compile="off", warmup=False).compile == "off"


@pytest.mark.parametrize(("setting", "device", "warmup", "resolved"), [
    ("off", "cuda", True, "off"), ("decoder", "cpu", True, "decoder"), ("all", "mps", True, "all"),
    ("auto", "cpu", True, "off"), ("auto", "mps", True, "off"), ("auto", "cuda", True, "decoder"),
    ("auto", "cuda:1", True, "decoder"), ("auto", "cuda", False, "off"),
])
def test_resolve(setting, device, warmup, resolved):
    assert compiling.resolve_compile(setting, device, warmup) == resolved


def test_parts_and_torch_modes():
    assert compiling.PARTS["decoder"] == ("sam_prompt_encoder", "sam_mask_decoder")
    assert compiling.PARTS["all"][-1] == "image_encoder"
    assert {p: compiling.torch_mode(p, "cpu") for p in compiling.PARTS["all"]} == dict.fromkeys(
        compiling.PARTS["all"], "default")
    assert {p: compiling.torch_mode(p, "cuda:0") for p in compiling.PARTS["all"]} == {
        "sam_prompt_encoder": "default", "sam_mask_decoder": "reduce-overhead",
        "image_encoder": "max-autotune-no-cudagraphs"}


def test_info_before_compiling():
    assert compiling.compile_info("off", None) == {"mode": "off", "parts": {}, "compileMs": None,
                                                   "graphs": 0}


def fake_model():
    def part():
        return types.SimpleNamespace(forward=lambda *a, **k: None)

    return types.SimpleNamespace(sam_prompt_encoder=part(), sam_mask_decoder=part(),
                                 image_encoder=part())


def test_a_failing_compile_is_a_startup_error_naming_the_setting(monkeypatch):
    """What torch.compile raises at the first call (here: no C++ compiler) stops start-up."""
    import torch

    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(compiling, "warm_up", lambda model, inference: model.sam_mask_decoder.forward())
    with pytest.raises(StartupError) as info:
        compiling.compile_sam2(fake_model(), "cpu", "decoder")
    msg = str(info.value)
    assert msg.startswith("--compile decoder: torch.compile failed on cpu: RuntimeError: "
                          "InvalidCxxCompiler: No working C++ compiler found;")
    assert "--compile off" in msg and "\n" not in msg


def test_compile_parts_wraps_each_part_once(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    model = fake_model()
    encoder_forward = model.image_encoder.forward
    assert compiling.compile_parts(model, "cpu", "decoder") == {
        "sam_prompt_encoder": "default", "sam_mask_decoder": "default"}
    assert compiling.compile_parts(model, "cpu", "decoder") == {
        "sam_prompt_encoder": "default", "sam_mask_decoder": "default"}
    assert len(calls) == 2 and all(kw["fullgraph"] and kw["dynamic"] is None for kw in calls)
    assert model.image_encoder.forward is encoder_forward
    import torch._dynamo.config

    assert torch._dynamo.config.recompile_limit >= compiling.RECOMPILE_LIMIT
