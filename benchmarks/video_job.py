"""Run `jobs/upscale_video.py` as a user would (its own process) and read its summary lines: what
the whole-process benchmarks (face_route, sftgan_fusion) compare."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_video_job(args: list[str]) -> dict:
    """args after the script name (`--no-progress` is added). Returns the process wall time, the
    summary's frames, wall, frames/s and steady frames/s, the per-stage worker-seconds (a dict, and
    the line as printed) and all stdout lines; a failed job ends the benchmark with its output."""
    cmd = [sys.executable, str(ROOT / "jobs" / "upscale_video.py"), *args, "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"job failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    lines = r.stdout.splitlines()
    m = re.search(r"frames: (\d+).*wall: ([\d.]+)s\s+([\d.]+) frames/s\s+\(steady ([\d.]+)",
                  next(x for x in lines if "wall:" in x))
    stages_line = next((x for x in lines if "per stage" in x), "")
    stages = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)s", stages_line.split(":", 1)[-1])}
    return {"process_wall": wall, "frames": int(m[1]), "wall": float(m[2]), "fps": float(m[3]),
            "steady": float(m[4]), "stages": stages, "stages_line": stages_line, "lines": lines}
