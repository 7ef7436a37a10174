"""benchmarks/faults.py, the SIGKILL-and-rerun reliability script: its oracles catch what they are
for (a changed byte, a stray partial, a dropped frame), its kills reach every process a job
starts, and one trial of the image job runs end to end."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import faults
from pipeline.synth import make_clip

ROOT = Path(__file__).resolve().parents[1]


def test_tree_diff_names_missing_changed_and_stray_files(tmp_path):
    for n in ("a.png", "b.png", "sub/c.jpg"):
        (tmp_path / n).parent.mkdir(exist_ok=True)
        (tmp_path / n).write_bytes(n.encode())
    (tmp_path / ".rayscale").mkdir()
    (tmp_path / ".rayscale" / "part.parquet").write_bytes(b"state")
    ref = faults.tree(tmp_path)
    assert sorted(ref) == ["a.png", "b.png", "sub/c.jpg"]   # the job's own state is not an output
    assert faults.diff_trees(ref, faults.tree(tmp_path)) == []
    (tmp_path / "a.png").write_bytes(b"a.pnG")
    (tmp_path / "b.png").unlink()
    (tmp_path / "sub" / ".c.jpg.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / ".rayscale" / "part.parquet").write_bytes(b"other state")
    reasons = faults.diff_trees(ref, faults.tree(tmp_path))
    assert reasons == ["1 missing: b.png", "1 not byte-identical: a.png", "1 stray: sub/.c.jpg.x1y2.tmp"]


def test_video_diff_sees_a_dropped_frame_and_not_an_identical_file(tmp_path):
    full = make_clip(str(tmp_path / "full.mp4"), frames=12, audio=False)
    short = make_clip(str(tmp_path / "short.mp4"), frames=11, audio=False)
    ref = faults.video_facts(Path(full))
    assert len(ref["pts"]) == 12
    assert faults.diff_video(ref, faults.video_facts(Path(full))) == []
    reasons = faults.diff_video(ref, faults.video_facts(Path(short)))
    assert len(reasons) == 1 and reasons[0].startswith("11 frames, clean run 12; pts missing: [")


def test_a_kill_reaches_the_whole_process_group(tmp_path):
    runner = faults.Runner(tmp_path)
    # a child in the background that would outlive its parent, as Ray's processes would
    r = runner.run(["sh", "-c", "sleep 60 & sleep 60"], timeout=30, kill_after=1)
    assert r.rc is None and r.seconds < 20
    assert runner.marked() == [] and runner.leftovers == 0
    assert runner.run(["sh", "-c", "exit 3"], timeout=30).rc == 3


def test_job_switches_are_read_from_help():
    switches = faults.job_switches("upscale_images.py")
    assert {"--overwrite", "--dry-run", "--faces"} <= switches      # options without a value
    assert "--scale" not in switches and "--resume" not in switches  # one with a value; one it lacks


def test_source_edits_between_dataset_runs(tmp_path):
    args = faults.parse_args(["--images", "9", "--seed", "5", "--work", str(tmp_path)])
    src = tmp_path / "src"
    faults.make_images(src, 9)
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, faults.sha256(p)) for p in src.iterdir()}
    done, deleted = faults.Harness(args, tmp_path).edit(src, 1, same_stat=True)
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns, faults.sha256(p)) for p in src.iterdir()}
    assert deleted in before and deleted not in after and set(after) - set(before) == {"added1.png"}
    replaced = re.search(r"replaced (\S+),", done)[1]
    assert after[replaced][0] != before[replaced][0]                  # another picture, another size
    same = re.search(r"same size\+mtime (\S+)$", done)[1]
    assert same.endswith(".bmp") and after[same][:2] == before[same][:2] and after[same][2] != before[same][2]
    assert sum(after[k] != before[k] for k in before if k in after) == 2   # nothing else touched


def test_a_failed_rerun_is_said_in_the_jobs_words_not_rays():
    log = ("Token authentication is enabled for this Ray cluster.\n"
           "failed: in.mp4: seg-00003: Invalid argument\n"
           "out.mp4: not written: 1 segment(s) failed\n"
           "\x1b[33m(raylet)\x1b[0m Task OperatorActor.process failed. There are 2 retries remaining\n")
    said = "failed: in.mp4: seg-00003: Invalid argument / out.mp4: not written: 1 segment(s) failed"
    assert faults.job_said(log) == said


@pytest.mark.slow
def test_one_kill_and_rerun_of_the_image_job_is_identical_to_a_clean_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--jobs", "images", "--trials", "1",
                        "--max-kills", "1", "--images", "12", "--seed", "3", "--work", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert re.search(r"^\| images \| 1 \| [01] \| 1 \| 0 \|$", p.stdout, re.M), p.stdout + p.stderr[-3000:]
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
