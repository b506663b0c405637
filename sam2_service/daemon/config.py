"""The daemon's settings: one frozen :class:`ServiceConfig`, one home for every default.

Each setting has a field here, a CLI flag and an environment variable (both listed in the
field's metadata, from which :mod:`sam2_service.cli` builds its parser), and a documented
default (README, "Settings"). Precedence: flag, then environment variable, then default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Mapping, get_args

from ..wire.frames import DEFAULT_SOCKET
from ..wire.limits import DEFAULT_MAX_IMAGE_PIXELS

ModelName = Literal["tiny", "small", "base_plus", "large"]
Precision = Literal["auto", "float32", "bfloat16"]
#: ``--compile``: torch.compile of SAM2 parts (see :mod:`sam2_service.daemon.inference.compiling`).
Compile = Literal["off", "decoder", "all", "auto"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Allocator = Literal["tuned", "system"]


#: SAM2.1 model name -> (hydra config inside the sam2 package, checkpoint file name).
#: Names and files as in facebookresearch/sam2 ``checkpoints/download_ckpts.sh`` (092824).
MODELS: Mapping[str, tuple[str, str]] = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}

#: Pillow refuses images above 2 x ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485) as decompression
#: bombs; the daemon never lifts that guard, so its own ceiling cannot exceed it.
PILLOW_BOMB_PIXELS = 2 * 89_478_485

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
#: ``--device cuda:all``: one model on each visible CUDA device (expanded at start-up).
ALL_CUDA = "cuda:all"


def default_log_file(platform: str = sys.platform, env: Mapping[str, str] = os.environ) -> Path:
    """Where the JSON-lines log goes when ``--log-file`` is not given.

    macOS: ``~/Library/Logs/WCCOverlay/sam2-service.log`` (where the overlay's debugging
    guide looks). Elsewhere: ``$XDG_STATE_HOME/sam2-service/sam2-service.log``, with
    ``XDG_STATE_HOME`` defaulting to ``~/.local/state`` (XDG Base Directory spec).
    """
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Logs" / "WCCOverlay" / "sam2-service.log"
    state = env.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(state) / "sam2-service" / "sam2-service.log"


def default_cache_dir(platform: str = sys.platform, env: Mapping[str, str] = os.environ) -> Path:
    """Where the disk tier of the embedding cache lives when ``--cache-dir`` is not given.

    macOS: ``~/Library/Caches/sam2-service``. Elsewhere: ``$XDG_CACHE_HOME/sam2-service``,
    with ``XDG_CACHE_HOME`` defaulting to ``~/.cache`` (XDG Base Directory spec).
    """
    home = Path(env.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Caches" / "sam2-service"
    cache = env.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(cache) / "sam2-service"


def default_checkpoint(model: str, root: Path | None = None) -> Path:
    """``checkpoints/sam2.1_hiera_<model>.pt`` under ``root`` (default: the working directory)."""
    return (root or Path.cwd()) / "checkpoints" / MODELS[model][1]


def _setting(default: Any, flag: str, env: str, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"flag": flag, "env": env, "help": help, **extra})


@dataclass(frozen=True)
class ServiceConfig:
    """Every setting of the daemon. Frozen: build a new one with :func:`dataclasses.replace`.

    Sizes are in bytes here (the CLI takes MB, 1 MB = 2**20 bytes); times in seconds.
    """

    socket_path: str = _setting(DEFAULT_SOCKET, "--socket", "SAM2_SERVICE_SOCKET",
                                "Unix socket path the daemon listens on")
    model: ModelName = _setting("tiny", "--model", "SAM2_SERVICE_MODEL",
                                "SAM2.1 model size", choices=get_args(ModelName))
    checkpoint: Path | None = _setting(None, "--checkpoint", "SAM2_SERVICE_CHECKPOINT",
                                       "checkpoint file (default checkpoints/sam2.1_hiera_<model>.pt)",
                                       type=Path)
    device: str = _setting("auto", "--device", "SAM2_SERVICE_DEVICE",
                           "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps; a "
                           "comma-separated list of these (e.g. cuda:0,cuda:1) or cuda:all "
                           "loads one model per device")
    precision: Precision = _setting("auto", "--precision", "SAM2_SERVICE_PRECISION",
                                    "auto: bfloat16 autocast on CUDA (as the sam2 examples), "
                                    "float32 elsewhere", choices=get_args(Precision))
    compile: Compile = _setting("off", "--compile", "SAM2_SERVICE_COMPILE",
                                "torch.compile during the start-up warm-up: off; decoder (prompt "
                                "encoder and mask decoder); all (and the image encoder); auto "
                                "(decoder on CUDA, off elsewhere)", choices=get_args(Compile))
    dummy_weights: bool = _setting(False, "--dummy-weights", "SAM2_SERVICE_DUMMY_WEIGHTS",
                                   "random-init model for smoke tests (masks are meaningless)",
                                   type=bool)
    warmup: bool = _setting(True, "--no-warmup", "SAM2_SERVICE_WARMUP",
                            "run one inference on a synthetic image before listening, so that "
                            "the first request is not slowed by one-time initialisation",
                            type=bool)
    fastpath: bool = _setting(True, "--no-fastpath", "SAM2_SERVICE_FASTPATH",
                              "run SAM2's predictor with the daemon's speed-ups: the prompt "
                              "encoder's positional encoding computed once, the mask decoder's "
                              "upscaling channels-last on the CPU, masks thresholded before they "
                              "leave the device, resize and normalisation on the GPU (results "
                              "unchanged but for float rounding; turning it off is for "
                              "comparisons)",
                              type=bool)
    allocator: Allocator = _setting("tuned", "--allocator", "SAM2_SERVICE_ALLOCATOR",
                                    "tuned: glibc malloc keeps the image encoder's large "
                                    "temporaries instead of mapping them afresh each time "
                                    "(Linux with glibc; elsewhere the same as system); system: "
                                    "malloc as it comes", choices=get_args(Allocator))
    log_file: Path | None = _setting(None, "--log-file", "SAM2_SERVICE_LOG_FILE",
                                     "JSON-lines log file (default: platform log folder)",
                                     type=Path)
    log_level: LogLevel = _setting("INFO", "--log-level", "SAM2_SERVICE_LOG_LEVEL",
                                   "log level", choices=get_args(LogLevel))
    log_max_bytes: int = _setting(10 * 2**20, "--log-max-mb", "SAM2_SERVICE_LOG_MAX_MB",
                                  "rotate the log file at this size (MB)", type=int, scale=2**20)
    log_backup_count: int = _setting(3, "--log-backups", "SAM2_SERVICE_LOG_BACKUPS",
                                     "rotated log files kept (0: keep none; the log is "
                                     "emptied when it reaches --log-max-mb)", type=int)
    max_frame_bytes: int = _setting(64 * 2**20, "--max-frame-mb", "SAM2_SERVICE_MAX_FRAME_MB",
                                    "largest frame accepted, checked from the length prefix (MB)",
                                    type=int, scale=2**20)
    max_image_pixels: int = _setting(DEFAULT_MAX_IMAGE_PIXELS, "--max-image-pixels",
                                     "SAM2_SERVICE_MAX_IMAGE_PIXELS",
                                     "largest image (width x height) decoded, read from its header",
                                     type=int)
    max_points: int = _setting(64, "--max-points", "SAM2_SERVICE_MAX_POINTS",
                               "most point prompts in one request", type=int)
    shutdown_timeout: float = _setting(30.0, "--shutdown-timeout", "SAM2_SERVICE_SHUTDOWN_TIMEOUT",
                                       "seconds to let running work finish on SIGTERM/SIGINT",
                                       type=float)
    cache_bytes: int = _setting(1024 * 2**20, "--cache-mb", "SAM2_SERVICE_CACHE_MB",
                                "memory for cached image embeddings, on the model's device "
                                "(MB; SAM2 needs 16 MB per image in float32, 0 turns the cache off)",
                                type=int, scale=2**20)
    cache_dir: Path | None = _setting(None, "--cache-dir", "SAM2_SERVICE_CACHE_DIR",
                                      "folder of the embedding cache's disk tier, made owner-only "
                                      "(default: $XDG_CACHE_HOME/sam2-service, on macOS "
                                      "~/Library/Caches/sam2-service)", type=Path)
    cache_disk_bytes: int = _setting(4096 * 2**20, "--cache-disk-mb", "SAM2_SERVICE_CACHE_DISK_MB",
                                     "disk space for image embeddings kept across restarts in "
                                     "--cache-dir (MB; least recently used removed first; 0 "
                                     "turns the disk tier off)", type=int, scale=2**20)
    max_queue: int = _setting(8, "--max-queue", "SAM2_SERVICE_MAX_QUEUE",
                              "most requests waiting for the model; beyond that the reply is "
                              "an immediate busy error", type=int)
    request_timeout: float = _setting(60.0, "--request-timeout", "SAM2_SERVICE_REQUEST_TIMEOUT",
                                      "seconds from a request's arrival to its reply before the "
                                      "reply is a timeout error", type=float)
    auto_timeout: float = _setting(600.0, "--auto-timeout", "SAM2_SERVICE_AUTO_TIMEOUT",
                                   "seconds from an auto request's arrival to its reply (it "
                                   "runs for minutes on a CPU) before the reply is a timeout "
                                   "error", type=float)
    auto_step_points: int = _setting(16, "--auto-step-points", "SAM2_SERVICE_AUTO_STEP_POINTS",
                                     "most grid points an auto request sends through the mask "
                                     "decoder in one step (its pointsPerBatch if smaller); a "
                                     "segment request waits for at most one step", type=int)
    video_max_frames: int = _setting(10000, "--video-max-frames", "SAM2_SERVICE_VIDEO_MAX_FRAMES",
                                     "most frames one video session holds; more is refused "
                                     "(video_too_large)", type=int)
    video_max_bytes: int = _setting(2048 * 2**20, "--video-max-mb", "SAM2_SERVICE_VIDEO_MAX_MB",
                                    "most frame bytes one video session holds (MB): PNG/JPEG "
                                    "files as sent, a video file's frames as RGB pixels; more "
                                    "is refused (video_too_large)", type=int, scale=2**20)
    video_max_sessions: int = _setting(4, "--video-max-sessions",
                                       "SAM2_SERVICE_VIDEO_MAX_SESSIONS",
                                       "most video sessions open at once; one more is refused "
                                       "(too_many_sessions)", type=int)
    video_idle_timeout: float = _setting(600.0, "--video-idle-timeout",
                                         "SAM2_SERVICE_VIDEO_IDLE_TIMEOUT",
                                         "seconds a video session may go unused before it is "
                                         "closed (its connection may stay idle as long)",
                                         type=float)
    idle_timeout: float = _setting(60.0, "--idle-timeout", "SAM2_SERVICE_IDLE_TIMEOUT",
                                   "seconds a connection may sit idle, or inside a partial "
                                   "frame, before it is closed", type=float)
    max_connections: int = _setting(256, "--max-connections", "SAM2_SERVICE_MAX_CONNECTIONS",
                                    "most client connections open at once; one more is closed "
                                    "at once", type=int)
    max_buffered_bytes: int = _setting(256 * 2**20, "--max-buffered-mb",
                                       "SAM2_SERVICE_MAX_BUFFERED_MB",
                                       "request bytes held at once over all connections, read "
                                       "or announced by a length prefix but not yet answered "
                                       "(MB); a frame that would go beyond gets busy and its "
                                       "connection is closed", type=int, scale=2**20)
    write_timeout: float = _setting(10.0, "--write-timeout", "SAM2_SERVICE_WRITE_TIMEOUT",
                                    "seconds a client may take to read a reply before its "
                                    "connection is closed", type=float)
    json_thread_bytes: int = _setting(2**20, "--json-thread-kb", "SAM2_SERVICE_JSON_THREAD_KB",
                                      "frames larger than this (KiB) are checked for too many "
                                      "values before parsing, and parsed on a thread",
                                      type=int, scale=2**10)
    max_boxes: int = _setting(64, "--max-boxes", "SAM2_SERVICE_MAX_BOXES",
                              "most boxes in one segment request's batched box prompt "
                              "(boxes)", type=int)
    logits_cache_entries: int = _setting(256, "--logits-cache-entries",
                                         "SAM2_SERVICE_LOGITS_CACHE_ENTRIES",
                                         "masks whose 256x256 low-resolution logits are kept "
                                         "for refinement (maskInput), 256 KiB each in host "
                                         "memory; 0 keeps none", type=int)
    max_request_bytes: int = _setting(2048 * 2**20, "--max-request-mb",
                                      "SAM2_SERVICE_MAX_REQUEST_MB",
                                      "working memory one request may take, estimated from "
                                      "pixels x masks before any work (MB); a segment request "
                                      "above it is refused (request_too_large), an auto request "
                                      "runs fewer grid points per step to fit", type=int,
                                      scale=2**20)
    max_reply_bytes: int = _setting(256 * 2**20, "--max-reply-mb", "SAM2_SERVICE_MAX_REPLY_MB",
                                    "largest reply built (MB); a request whose reply would be "
                                    "larger is refused (reply_too_large), raw masks before "
                                    "any work", type=int, scale=2**20)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        parse_devices(self.device)
        if self.allocator not in get_args(Allocator):
            raise ValueError(f"allocator must be one of {get_args(Allocator)}, "
                             f"not {self.allocator!r}")
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision must be one of {get_args(Precision)}, not {self.precision!r}")
        for name in ("log_max_bytes", "max_frame_bytes", "max_image_pixels", "max_points",
                     "max_queue", "request_timeout", "idle_timeout", "shutdown_timeout",
                     "max_connections", "max_buffered_bytes", "write_timeout",
                     "json_thread_bytes", "auto_timeout", "auto_step_points",
                     "max_request_bytes", "max_reply_bytes", "video_max_frames",
                     "video_max_bytes", "video_max_sessions", "video_idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_image_pixels > PILLOW_BOMB_PIXELS:
            raise ValueError(f"max_image_pixels can be at most {PILLOW_BOMB_PIXELS} (Pillow's "
                             "decompression-bomb limit, which the daemon never lifts)")
        if self.log_backup_count < 0:
            raise ValueError("log_backup_count must be 0 (keep no old log) or positive")
        if self.max_buffered_bytes < self.max_frame_bytes:
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                             f"max_frame_bytes ({self.max_frame_bytes}): one largest frame "
                             "must fit (raise --max-buffered-mb with --max-frame-mb)")
        if self.cache_bytes < 0:
            raise ValueError("cache_bytes must be 0 (off) or positive")
        if self.cache_disk_bytes < 0:
            raise ValueError("cache_disk_bytes must be 0 (off) or positive")
        if self.max_boxes <= 0:
            raise ValueError("max_boxes must be positive")
        if self.logits_cache_entries < 0:
            raise ValueError("logits_cache_entries must be 0 (keep none) or positive")
        if self.compile not in get_args(Compile):
            raise ValueError(f"compile must be one of {get_args(Compile)}, not {self.compile!r}")
        if self.compile in ("decoder", "all") and not self.warmup:
            raise ValueError(f"--compile {self.compile} compiles during the start-up warm-up, "
                             "which --no-warmup (SAM2_SERVICE_WARMUP=0) turns off: drop one")

    @property
    def devices(self) -> list[str]:
        """:attr:`device` as a list of device specs, one model each (``cuda:all`` stays one
        item, expanded at start-up by :func:`sam2_service.daemon.inference.hardware.expand_devices`)."""
        return parse_devices(self.device)

    @property
    def model_config(self) -> str:
        """The sam2 package's hydra config name for :attr:`model`."""
        return MODELS[self.model][0]

    @property
    def checkpoint_path(self) -> Path:
        """:attr:`checkpoint`, or the default for :attr:`model`, made absolute."""
        return (self.checkpoint or default_checkpoint(self.model)).absolute()

    @property
    def cache_path(self) -> Path:
        """:attr:`cache_dir`, or :func:`default_cache_dir`, made absolute."""
        return (self.cache_dir or default_cache_dir()).expanduser().absolute()

    @property
    def log_path(self) -> Path:
        """:attr:`log_file`, or :func:`default_log_file`, made absolute."""
        return (self.log_file or default_log_file()).expanduser().absolute()


def parse_devices(text: object) -> list[str]:
    """``--device`` text -> its device specs: ``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``,
    or several of these separated by commas (no spaces; one may repeat, for two models on one
    device), or ``cuda:all`` alone.

    Raises:
        ValueError: naming ``device``, on any other text.
    """
    specs = text.split(",") if isinstance(text, str) else []
    if specs == [ALL_CUDA]:
        return specs
    if not specs or not all(_DEVICE_RE.fullmatch(s) for s in specs):
        raise ValueError("device must be auto, cpu, cuda, cuda:N or mps, a comma-separated list "
                         f"of these (e.g. cuda:0,cuda:1), or cuda:all; not {text!r}")
    return specs


def settings() -> list[dataclasses.Field]:
    """The fields of :class:`ServiceConfig`, in declaration order, with flag/env/help metadata."""
    return list(dataclasses.fields(ServiceConfig))


#: Words a boolean variable accepts (case-insensitive; the empty string is false too).
_TRUE_WORDS: Final = ("1", "true", "yes", "on")
_FALSE_WORDS: Final = ("0", "false", "no", "off")
#: What to write instead of a value that does not parse, by setting type.
_VALID_TEXT: Final = {
    bool: "use 1/0, true/false, yes/no or on/off",
    int: "use a whole number, e.g. 8",
    float: "use a number, e.g. 2.5",
}


def parse_env_value(f: dataclasses.Field, raw: str) -> Any:
    """Convert an environment variable's text to the setting's type (in config units).

    Booleans accept 1/0, true/false, yes/no, on/off (case-insensitive). Raises ValueError
    naming the variable on anything else.
    """
    kind = f.metadata.get("type", str)
    env = f.metadata["env"]
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE_WORDS:
                return True
            if low in _FALSE_WORDS or low == "":
                return False
            raise ValueError(raw)
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a valid {kind.__name__}: "
                         f"{_VALID_TEXT.get(kind, 'see the README settings table')}") from None
    return value * f.metadata.get("scale", 1) if kind in (int, float) else value


class StartupError(Exception):
    """The daemon cannot start (missing checkpoint, missing sam2, bad device).

    The message is one line that says what is wrong and how to fix it; the CLI prints it
    and exits non-zero. It never crosses the wire.
    """
