"""Reliability under SIGKILL: random kills of whole jobs, then the normal rerun, checked against a
clean run with oracles that do not go through the code under test (sha256 of the bytes on disk,
frames and timestamps decoded with PyAV).

    python benchmarks/faults.py --trials 3 --jobs images,dataset,video-faces --seed 1

Per job: small inputs are made on the spot (crops of ../shared/data/Set14, or synthetic pictures
when it is absent; a 48-frame clip with 20 px faces, keyframes every 12 frames), one clean run is
timed, then each trial starts the job in its own process group, SIGKILLs the group at a time drawn
uniformly over the clean run's duration (1 to --max-kills times in a row, seeded), reruns it to
completion and compares:

* images: every output exactly once and byte-identical to the clean run's, no stray file in DST
  (hidden `.tmp` partials, duplicates), exit 0.
* dataset: a first scheduled run (killed, then completed) checked as above; then the sources are
  edited (one file replaced, one added, one deleted and, when the job has `--verify-content`, one
  rewritten with the same size and mtime, as `cp -p` does) and a second run is killed and
  completed: DST must equal a clean run on the edited sources. A deleted source's output must be
  gone when the job has `--delete-missing` (passed then); without it, it must be left as it was.
* video-faces: `upscale_video.py --faces`, reruns with `--resume`: frame count, every frame's
  pts and every decoded frame equal to the clean run's, the faces table's rows too, exit 0; whether
  the file itself is byte-identical is counted and printed (it says whether encoding is
  deterministic across resumes).

Flags the jobs may or may not have yet (`--verify-content`, `--delete-missing`) are read from their
`--help`. Prints a table (job, trials, kills, identical, mismatches) and one line per mismatch;
exit 1 if any. Every process a run starts carries a marker in its environment; before the next run
the script waits for them to end and kills (and reports) any that outlive the job by 60 s.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("RAYSCALE_SHARED", ROOT.parent / "shared"))
JOBS = ("images", "dataset", "video-faces")
SHAPES = ((48, 40), (40, 32), (56, 48))   # (w, h): three shapes, so a group holds several batches
EXTS = ("png", "jpg", "bmp")              # BMP: same size for the same shape, for the cp -p edit
MARKER = "RAYSCALE_FAULTS_RUN"
SETTLE_S = 60.0
RAY_LINE = re.compile(r"\(raylet\)|\(\w+ pid=|Token authentication|\x1b\[")   # Ray's own log lines


# ------------------------------------------------------------------- running and killing jobs

@dataclass
class Run:
    rc: int | None          # None: killed by us
    seconds: float
    log: str


class Runner:
    """Starts job commands in their own process group, tagged with a marker in the environment,
    and makes sure nothing a run started outlives it before the next run begins."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.token = uuid.uuid4().hex
        self.env = dict(os.environ, **{MARKER: self.token})
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.count = 0
        self.leftovers = 0   # processes that outlived their job by SETTLE_S and were killed here

    def start(self, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.logs / f"run{self.count:03d}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                 start_new_session=True)
        return p, log

    def run(self, cmd: list[str], timeout: float, kill_after: float | None = None) -> Run:
        """Run cmd; SIGKILL its whole process group at `kill_after` seconds (rc None) if it is
        still running then, or at `timeout` (rc -9)."""
        p, log = self.start(cmd)
        t0 = time.monotonic()
        limit = timeout if kill_after is None else min(kill_after, timeout)
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None if kill_after is not None and kill_after < timeout else -9
        seconds = time.monotonic() - t0
        self.settle()
        return Run(rc, seconds, log.read_text(errors="replace"))

    def marked(self) -> list[int]:
        """Live processes that carry this runner's marker (a run's descendants, Ray's included)."""
        needle, me, found = f"{MARKER}={self.token}".encode(), os.getpid(), []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if needle in f.read().split(b"\0"):
                            found.append(int(entry))
                except OSError:
                    continue
        return found

    def settle(self) -> None:
        """Wait for the job's own clean-up (its Ray watchdog) to end what it started; kill what
        is left after SETTLE_S, counting it."""
        deadline = time.monotonic() + SETTLE_S
        while self.marked() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.marked():
            self.leftovers += 1
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def job_switches(script: str) -> set[str]:
    """The options without a value (`[--flag]` in its usage) a job script accepts, read from its
    --help, so this script works before and after a flag lands."""
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--help"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    return set(re.findall(r"\[(--[a-z][a-z0-9-]+)\]", out))


def job_said(log: str) -> str:
    """The job's own words on why it failed: its first `failed:` line and its last line, less
    the lines Ray prints beside them."""
    lines = [x for x in log.splitlines() if x.strip() and not RAY_LINE.search(x)]
    failed = [x for x in lines if x.startswith("failed:")][:1]
    return " / ".join(x[:200] for x in failed + [x for x in lines[-1:] if x not in failed])


# ------------------------------------------------------------------- oracles

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root, hidden ones included, less the job's
    own state folder (manifest, reports: they differ from run to run by design)."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".rayscale/"):
            out[rel] = sha256(p)
    return out


def diff_trees(expected: dict[str, str], got: dict[str, str]) -> list[str]:
    """Reasons, one per kind, why `got` is not `expected` file for file and byte for byte."""
    def names(xs):
        xs = sorted(xs)
        return ", ".join(xs[:4]) + (f" (+{len(xs) - 4} more)" if len(xs) > 4 else "")
    missing = expected.keys() - got.keys()
    stray = got.keys() - expected.keys()
    differ = [k for k in expected.keys() & got.keys() if expected[k] != got[k]]
    return ([f"{len(missing)} missing: {names(missing)}"] if missing else []) + \
           ([f"{len(differ)} not byte-identical: {names(differ)}"] if differ else []) + \
           ([f"{len(stray)} stray: {names(stray)}"] if stray else [])


def video_facts(path: Path) -> dict:
    """What a viewer gets from the file, read with PyAV: frame count, each frame's pts and a hash
    of each decoded frame; and the file's own hash."""
    import av
    pts, frames = [], []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            pts.append(f.pts)
            frames.append(hashlib.sha256(f.to_ndarray().tobytes()).hexdigest())
    return {"pts": pts, "frames": frames, "sha256": sha256(path)}


def segment_files(out: Path) -> int:
    """Segment files a video job writing OUT has on disk (kept for --resume)."""
    return len(list(Path(f"{out}.parts").glob("*.seg")))


def faces_rows(table: Path) -> list[tuple] | None:
    """The faces table's rows that do not depend on how segments were scheduled, sorted."""
    if not table.is_file():
        return None
    import pyarrow.parquet as pq
    t = pq.read_table(table, columns=["frame", "pts", "restored"]).to_pydict()
    return sorted(zip(t["frame"], t["pts"], t["restored"]))


def diff_video(ref: dict, got: dict) -> list[str]:
    if len(got["pts"]) != len(ref["pts"]):
        missing = sorted(set(ref["pts"]) - set(got["pts"]))
        return [f"{len(got['pts'])} frames, clean run {len(ref['pts'])}"
                + (f"; pts missing: {missing[:8]}" if missing else "")]
    if got["pts"] != ref["pts"]:
        i = next(i for i, (a, b) in enumerate(zip(ref["pts"], got["pts"])) if a != b)
        return [f"pts differ from frame {i}: {got['pts'][i]} vs {ref['pts'][i]}"]
    bad = [i for i, (a, b) in enumerate(zip(ref["frames"], got["frames"])) if a != b]
    return [f"{len(bad)} decoded frames differ, first {bad[0]}"] if bad else []


# ------------------------------------------------------------------- inputs

def picture(k: int, variant: int = 0):
    """Image k of the set (shape and format by k), `variant` another crop of the same size."""
    import numpy as np
    from PIL import Image
    w, h = SHAPES[k % len(SHAPES)]
    sources = sorted((SHARED / "data" / "Set14" / "HR").glob("*.png"))
    if sources:
        im = Image.open(sources[k % len(sources)]).convert("RGB")
        x, y = (17 * k + 53 * variant) % (im.width - w), (11 * k + 37 * variant) % (im.height - h)
        return im.crop((x, y, x + w, y + h))
    rng = np.random.default_rng(1000 * k + variant)   # no shared data: smooth random pictures
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w * 2, h * 2), Image.BICUBIC).crop((0, 0, w, h))


def name(k: int) -> str:
    return f"p{k:02d}.{EXTS[(k // len(SHAPES)) % len(EXTS)]}"


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for k in range(n):
        picture(k).save(folder / name(k))


def make_face_clip(path: Path, frames: int = 48, gop: int = 12) -> None:
    """benchmarks/face_route.py's clip (20 px faces, the size the x4 face model restores),
    re-encoded with a keyframe every `gop` frames so the job has several segments to lose."""
    import av
    from benchmarks.face_route import make_clip
    raw = path.with_name("raw_" + path.name)
    make_clip(raw, 2, frames, 160, 96, 20)
    with av.open(str(raw)) as i, av.open(str(path), "w") as o:
        s = o.add_stream("libx264", rate=25, options={"crf": "14", "g": str(gop)})
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for f in i.decode(video=0):
            for pkt in s.encode(av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")):
                o.mux(pkt)
        for pkt in s.encode():
            o.mux(pkt)
    raw.unlink()


# ------------------------------------------------------------------- trials

@dataclass
class Tally:
    job: str
    trials: int = 0
    kills: int = 0
    identical: int = 0
    at_kill: list[int] = field(default_factory=list)   # outputs on disk at each kill
    counted: str = "outputs"                             # what at_kill counts
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Harness:
    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.runner = Runner(work / "logs")
        self.timeout = args.timeout

    def cmd(self, script: str, *rest: str) -> list[str]:
        return [sys.executable, str(ROOT / "jobs" / script), *rest, "--no-progress"]

    def clean(self, cmd: list[str], what: str) -> Run:
        r = self.runner.run(cmd, self.timeout)
        if r.rc != 0:
            raise SystemExit(f"the clean {what} run failed (exit {r.rc}):\n{r.log[-3000:]}")
        return r

    def killed_then_rerun(self, first: list[str], rerun: list[str], window: float, tally: Tally,
                          written=None) -> tuple[Run, str]:
        """Kill 1..max-kills runs in a row at uniform times over `window` (the first run with
        `first`, later ones with `rerun`), then rerun to completion. A run that ends before its
        kill time is the final one. `written()` counts the outputs on disk, noted at each kill.
        Returns the final run and what happened, for the report."""
        kills = []
        for k in range(self.rng.randint(1, self.args.max_kills)):
            at = self.rng.uniform(0, window)
            r = self.runner.run(first if k == 0 else rerun, self.timeout, kill_after=at)
            if r.rc is not None:
                kills.append(f"run {k + 1} ended before its kill at {at:.1f}s")
                return r, "; ".join(kills)
            tally.kills += 1
            if written is None:
                kills.append(f"killed at {at:.1f}s")
            else:
                tally.at_kill.append(written())
                kills.append(f"killed at {at:.1f}s with {tally.at_kill[-1]} written")
        return self.runner.run(rerun, self.timeout), "; ".join(kills)

    def record(self, tally: Tally, trial: int, how: str, final: Run, reasons: list[str]) -> None:
        tally.trials += 1
        if final.rc == -9:
            reasons = [f"final rerun hung: no exit in {self.timeout:.0f}s"] + reasons
        elif final.rc != 0:
            reasons = [f"final rerun exit {final.rc}: {job_said(final.log)}"] + reasons
        if reasons:
            tally.mismatches.append(f"trial {trial} ({how}): " + "; ".join(reasons))
        else:
            tally.identical += 1

    # images ----------------------------------------------------------------------------------
    def image_cmd(self, src: Path, dst: Path, extra=()) -> list[str]:
        return self.cmd("upscale_images.py", str(src), str(dst), "--scale", "2", "--group-size", "3", *extra)

    def images(self) -> Tally:
        tally = Tally("images")
        src = self.work / "images" / "src"
        make_images(src, self.args.images)
        ref_dst = self.work / "images" / "clean"
        clean = self.clean(self.image_cmd(src, ref_dst), "image job")
        ref = tree(ref_dst)
        tally.notes.append(f"images: clean run {clean.seconds:.1f}s, {len(ref)} outputs")
        for t in range(1, self.args.trials + 1):
            dst = self.work / "images" / f"trial{t}"
            cmd = self.image_cmd(src, dst)
            final, how = self.killed_then_rerun(cmd, cmd, clean.seconds, tally, lambda: len(tree(dst)))
            self.record(tally, t, how, final, diff_trees(ref, tree(dst)))
            self.tidy(dst)
        return tally

    # dataset ---------------------------------------------------------------------------------
    def dataset(self) -> Tally:
        tally = Tally("dataset")
        switches = job_switches("upscale_dataset.py")
        extra = [f for f in ("--verify-content", "--delete-missing") if f in switches]
        tally.notes.append("dataset: job flags used: " + (" ".join(extra) or "none of --verify-content, "
                                                           "--delete-missing (not in --help)"))
        base = self.work / "dataset" / "base"
        make_images(base, self.args.images)
        ref_dst = self.work / "dataset" / "clean"
        clean = self.clean(self.dataset_cmd(base, ref_dst, extra), "dataset job")
        ref = tree(ref_dst)
        for t in range(1, self.args.trials + 1):
            root = self.work / "dataset" / f"trial{t}"
            src, dst = root / "src", root / "dst"
            shutil.copytree(base, src)   # copy2: mtimes kept, as a synced folder has
            cmd = self.dataset_cmd(src, dst, extra)
            final, how = self.killed_then_rerun(cmd, cmd, clean.seconds, tally, lambda: len(tree(dst)))
            before = tree(dst)
            reasons = [f"first run: {r}" for r in diff_trees(ref, before)]
            if final.rc != 0:
                reasons.insert(0, f"first run exit {final.rc}")
            edits, deleted = self.edit(src, t, "--verify-content" in extra)
            edited_ref = root / "clean_edited"
            self.clean(self.dataset_cmd(src, edited_ref, extra), "dataset job (edited sources)")
            expected = tree(edited_ref)
            if "--delete-missing" not in extra and deleted in before:
                expected[deleted] = before[deleted]   # kept as it was, reported as deleted
            final, how2 = self.killed_then_rerun(cmd, cmd, clean.seconds, tally, lambda: len(tree(dst)))
            reasons += [f"after edits ({edits}): {r}" for r in diff_trees(expected, tree(dst))]
            self.record(tally, t, f"first run {how}; after edits {how2}", final, reasons)
            self.tidy(root)
        return tally

    def dataset_cmd(self, src: Path, dst: Path, extra) -> list[str]:
        return self.cmd("upscale_dataset.py", str(src), str(dst), "--scale", "2", "--group-size", "3", *extra)

    def edit(self, src: Path, trial: int, same_stat: bool) -> tuple[str, str]:
        """Edit the sources as users do between scheduled runs; returns what was done and the
        deleted file's name."""
        n = self.args.images
        ks = self.rng.sample(range(n), 3)
        replaced, deleted = name(ks[0]), name(ks[1])
        picture(ks[0] + 1, variant=trial).save(src / replaced)   # another shape: another size
        (src / deleted).unlink()
        added = f"added{trial}.png"
        picture(n + trial).save(src / added)
        done = [f"replaced {replaced}", f"deleted {deleted}", f"added {added}"]
        if same_stat:
            bmps = [name(k) for k in range(n) if name(k).endswith(".bmp") and name(k) not in (replaced, deleted)]
            target = src / self.rng.choice(bmps)
            st = target.stat()
            k, old = int(target.stem[1:]), sha256(target)
            for variant in range(trial + 1, trial + 9):   # another crop, of other pixels
                picture(k, variant).save(target)
                if sha256(target) != old:
                    break
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))   # what cp -p / rsync -t keep
            assert target.stat().st_size == st.st_size, "a BMP of the same shape has the same size"
            done.append(f"same size+mtime {target.name}")
        return ", ".join(done), deleted

    # video with faces ------------------------------------------------------------------------
    def video_cmd(self, clip: Path, out: Path, resume: bool) -> list[str]:
        return self.cmd("upscale_video.py", str(clip), str(out), "--faces", "--scale", "4",
                        "--segment-frames", "12", *(["--resume"] if resume else []))

    def video_faces(self) -> Tally:
        tally = Tally("video-faces", counted="segment files (OUT.parts/*.seg)")
        if not (SHARED / "data" / "faces").is_dir():
            tally.notes.append(f"video-faces: skipped, needs the face photos in {SHARED / 'data' / 'faces'}")
            return tally
        clip = self.work / "video" / "faces.mp4"
        clip.parent.mkdir(parents=True)
        make_face_clip(clip, self.args.frames)
        ref_out = self.work / "video" / "clean" / "out.mp4"
        ref_out.parent.mkdir()
        clean = self.clean(self.video_cmd(clip, ref_out, False), "video job")
        ref, ref_faces = video_facts(ref_out), faces_rows(Path(f"{ref_out}.faces.parquet"))
        ref_names = sorted(p.name for p in ref_out.parent.iterdir())
        restored = sum(r[2] for r in ref_faces or [])
        tally.notes.append(f"video-faces: clean run {clean.seconds:.1f}s, {len(ref['pts'])} frames, "
                           f"{len(ref_faces or [])} faces ({restored} restored)")
        same_bytes = 0
        for t in range(1, self.args.trials + 1):
            out = self.work / "video" / f"trial{t}" / "out.mp4"
            out.parent.mkdir()
            final, how = self.killed_then_rerun(self.video_cmd(clip, out, False), self.video_cmd(clip, out, True),
                                                clean.seconds, tally, lambda: segment_files(out))
            reasons = []
            if out.is_file():
                got = video_facts(out)
                reasons += diff_video(ref, got)
                same_bytes += got["sha256"] == ref["sha256"]
                faces = faces_rows(Path(f"{out}.faces.parquet"))
                if faces != ref_faces:
                    reasons.append(f"faces table {len(faces or [])} rows, clean run {len(ref_faces or [])}"
                                   if faces is None or len(faces) != len(ref_faces or []) else
                                   "faces table rows differ from the clean run's")
                names = sorted(p.name for p in out.parent.iterdir())
                if names != ref_names:
                    reasons.append(f"files beside OUT {names}, clean run {ref_names}")
            else:
                reasons.append("no output file")
            self.record(tally, t, how, final, reasons)
            self.tidy(out.parent)
        if tally.trials:
            tally.notes.append(f"video-faces: output file byte-identical to the clean run's in {same_bytes} of "
                               f"{tally.trials} trials")
        return tally

    def tidy(self, path: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(path, ignore_errors=True)


def report(tallies: list[Tally], leftovers: int) -> int:
    print("| job | trials | kills | identical | mismatches |")
    print("|---|---|---|---|---|")
    for t in tallies:
        print(f"| {t.job} | {t.trials} | {t.kills} | {t.identical} | {len(t.mismatches)} |")
    for t in tallies:
        for note in t.notes:
            print(note)
        if t.at_kill:
            print(f"{t.job}: {t.counted} on disk at each kill: {', '.join(map(str, t.at_kill))}")
        for m in t.mismatches:
            print(f"mismatch: {t.job} {m}")
    if leftovers:
        print(f"note: {leftovers} process(es) outlived their job by {SETTLE_S:.0f}s and were killed here")
    return 1 if any(t.mismatches for t in tallies) else 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3, help="kill-and-rerun trials per job")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill times, kill counts and edits")
    ap.add_argument("--max-kills", type=int, default=3, help="kills in a row per trial: 1 to this many")
    ap.add_argument("--images", type=int, default=42, help="images in the photo and dataset sets")
    ap.add_argument("--frames", type=int, default=48, help="frames of the face clip (segments of 12)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a run counts as hung")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep every trial's inputs, outputs and logs")
    args = ap.parse_args(argv)
    unknown = set(args.jobs.split(",")) - set(JOBS)
    if unknown:
        ap.error(f"unknown job(s) {', '.join(sorted(unknown))}; choose from {', '.join(JOBS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rayscale-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(args, work)
    runs = {"images": harness.images, "dataset": harness.dataset, "video-faces": harness.video_faces}
    try:
        tallies = [runs[j]() for j in JOBS if j in args.jobs.split(",")]
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return report(tallies, harness.runner.leftovers)


if __name__ == "__main__":
    sys.exit(main())
