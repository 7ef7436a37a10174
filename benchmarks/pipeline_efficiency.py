"""How much of the model's speed the video pipeline keeps, and whether memory grows with length.

Prints, measured side by side in one run on the same machine:
  * model-only frames/s: the same batches, same device and threads, no decode/encode/IO;
  * pipeline frames/s: jobs/upscale_video.py on an embedded Ray (actors, decode, encode, mux);
  * naive frames/s: one process, decode -> model -> encode in a plain loop;
  * peak memory (PSS) of the whole job (driver + Ray workers) on a clip and on one 10x longer.

    python benchmarks/pipeline_efficiency.py            # defaults: 640x360, 32 frames, x2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.rdn import RDN  # noqa: E402
from operators.upscale import Upscaler  # noqa: E402
from pipeline.encode import EncodeSettings, SegmentWriter, StreamParams  # noqa: E402
from pipeline.frames import to_rgb  # noqa: E402
from pipeline.probe import probe  # noqa: E402
from pipeline.engine import OPERATOR_ENV  # noqa: E402
from pipeline.synth import make_clip  # noqa: E402


def make_weights(path: str, scale: int, G0: int, D: int, C: int, G: int) -> str:
    """An RDN in the official key layout with small random weights around a nearest-neighbour
    path, so frames carry real content through the encoder (cost is what matters here)."""
    torch.manual_seed(0)
    net = RDN(scale=scale, G0=G0, D=D, C=C, G=G)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)
        for c in range(3):
            net.SFENet1.weight[c, c, 1, 1] += 1
            net.UPNet[-1].weight[c, c, 1, 1] += 1
            for i in range(scale * scale):
                net.UPNet[0].weight[c * scale * scale + i, c, 1, 1] += 1
    torch.save(net.state_dict(), path)
    return path


def decoded_batches(path: str, batch: int) -> list[dict]:
    info = probe(path)
    frames = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            frames.append(to_rgb(f, info.bit_depth, info.colorspace, info.color_range))
    return [{"frames": np.stack(frames[i:i + batch])} for i in range(0, len(frames), batch)]


def model_only_fps(weights: str, batches: list[dict], threads: int) -> float:
    torch.set_num_threads(threads)
    op = Upscaler("rdn", weights=weights, device="cpu")
    op(batches[0])  # warm-up
    t0 = time.perf_counter()
    n = sum(len(op(b)["frames"]) for b in batches)
    return n / (time.perf_counter() - t0)


def naive_fps(weights: str, clip: str, batch: int, threads: int, out: str) -> float:
    torch.set_num_threads(threads)
    info = probe(clip)
    op = Upscaler("rdn", weights=weights, device="cpu")
    t0 = time.perf_counter()
    params = StreamParams(info.width * op.scale, info.height * op.scale, info.time_base, info.average_rate,
                          info.pix_fmt, info.colorspace, info.color_range, info.color_primaries, info.color_trc)
    w = SegmentWriter(out, EncodeSettings(), params)
    n = 0
    buf, pts = [], []
    with av.open(clip) as c:
        for f in c.decode(video=0):
            buf.append(to_rgb(f, info.bit_depth, info.colorspace, info.color_range))
            pts.append(f.pts)
            if len(buf) == batch:
                n += w.write(op({"frames": np.stack(buf)})["frames"], np.array(pts))
                buf, pts = [], []
    if buf:
        n += w.write(op({"frames": np.stack(buf)})["frames"], np.array(pts))
    w.close()
    return n / (time.perf_counter() - t0)


def _tree_pss(root_pid: int) -> int:
    """Memory (bytes) of a process and all its descendants, as the sum of their proportional set
    sizes: pages shared through Ray's object store are counted once, not once per process."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, stack = 0, [root_pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


def run_job(args: list[str]) -> tuple[float, int, str]:
    """Run the job as users do; return (wall seconds after Ray is up, peak memory of the job's
    process tree, stdout)."""
    cmd = [sys.executable, str(ROOT / "jobs" / "upscale_video.py"), *args, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample)
    t.start()
    out = proc.communicate()[0]
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"job failed ({proc.returncode}):\n{out}")
    wall = float(out.split("wall: ")[1].split("s")[0])
    return wall, peak, out


def steady_fps(job_output: str) -> float:
    return float(job_output.split("(steady ")[1].split(" ")[0])


def in_actor_env(what: str, weights: str, clip: str, batch: int, threads: int, out: str) -> float:
    """Run a baseline in a fresh process with the operator actors' environment (allocator
    settings), so model-only, naive and pipeline differ only in what they measure."""
    env = dict(os.environ, **OPERATOR_ENV)
    r = subprocess.run([sys.executable, __file__, "--child", what, weights, clip, str(batch), str(threads), out],
                       env=env, capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def child(what: str, weights: str, clip: str, batch: str, threads: str, out: str) -> None:
    if what == "model-only":
        print(model_only_fps(weights, decoded_batches(clip, int(batch)), int(threads)))
    else:
        print(naive_fps(weights, clip, int(batch), int(threads), out))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(*argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--rdn", default="32,6,4,32", help="G0,D,C,G of the RDN used as the costly model")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--long-factor", type=int, default=10)
    ap.add_argument("--skip-rss", action="store_true")
    a = ap.parse_args(argv)
    w, h = map(int, a.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="rayscale-bench-"))
    G0, D, C, G = map(int, a.rdn.split(","))
    weights = make_weights(str(tmp / "rdn.pth"), a.scale, G0, D, C, G)
    clip = make_clip(str(tmp / "clip.mp4"), frames=a.frames, width=w, height=h, gop=12)
    print(f"clip {w}x{h}, {a.frames} frames, x{a.scale}, RDN G0={G0} D={D} C={C} G={G}, "
          f"batch {a.batch_size}, {a.threads} torch threads, {os.cpu_count()} cores")

    m_fps = in_actor_env("model-only", weights, clip, a.batch_size, a.threads, "")
    print(f"model-only : {m_fps:7.3f} frames/s")

    job = [clip, str(tmp / "out.mp4"), "--model", "rdn", "--weights", weights, "--scale", str(a.scale),
           "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--segment-frames", "12"]
    wall, _, out = run_job(job)
    p_fps = a.frames / wall
    s_fps = steady_fps(out)
    print(f"pipeline   : {p_fps:7.3f} frames/s end to end (Ray job: actor start, model load, decode, "
          f"encode, mux; {wall:.1f}s), {s_fps:.3f} frames/s steady state")
    n_fps = in_actor_env("naive", weights, clip, a.batch_size, a.threads, str(tmp / "naive.mov"))
    print(f"naive loop : {n_fps:7.3f} frames/s")
    print(f"pipeline / model-only = {p_fps / m_fps:.3f} end to end, {s_fps / m_fps:.3f} steady   (target >= 0.9)")
    print(f"pipeline / naive loop = {p_fps / n_fps:.3f}")

    if not a.skip_rss:
        long_clip = make_clip(str(tmp / "long.mp4"), frames=a.frames * a.long_factor, width=w, height=h, gop=12)
        cheap = ["--model", "bicubic", "--scale", str(a.scale), "--segment-frames", "12"]
        _, rss_a, _ = run_job([clip, str(tmp / "a.mp4"), *cheap])
        _, rss_b, _ = run_job([long_clip, str(tmp / "b.mp4"), *cheap])
        print(f"peak memory (PSS of job + Ray workers): {a.frames} frames {rss_a / 2**20:.0f} MiB, "
              f"{a.frames * a.long_factor} frames {rss_b / 2**20:.0f} MiB, ratio {rss_b / rss_a:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
