"""The engine on toy operators whose output is known arithmetic: graph checks, fusion, stateful
operators (one actor per item, rows released at flush), resume from the manifest, and a
two-node cluster where writers must sit on the driver's node."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import engine
from pipeline.engine import StageSpec, check_graph, fuse
from pipeline.errors import InputError
from pipeline.manifest import Manifest
from tests import engine_toys as toys

ROOT = Path(__file__).resolve().parents[1]


def stage(name, cls, **kw):
    return StageSpec(name, functools.partial(cls), **kw)


def test_graph_check_names_the_stage_and_the_missing_column():
    check_graph(("frames", "index", "pts"), [stage("mark", toys.Mark), stage("use", toys.NeedsMark)])
    with pytest.raises(InputError) as e:
        check_graph(("frames", "index", "pts"), [stage("use", toys.NeedsMark), stage("mark", toys.Mark)])
    msg = str(e.value)
    assert "stage use" in msg and "'mark'" in msg and "\n" not in msg


def test_fusion_groups_consecutive_stages_on_one_device():
    a, b = stage("a", toys.AddOne), stage("b", toys.Double)
    g = stage("g", toys.Mark, gpus_per_actor=1)
    assert [[s.name for s in grp] for grp in fuse([a, b, g])] == [["a", "b"], ["g"]]
    assert [[s.name for s in grp] for grp in fuse([a, b, g], enabled=False)] == [["a"], ["b"], ["g"]]
    two = stage("two", toys.Mark, actors=2)
    assert [[s.name for s in grp] for grp in fuse([a, two])] == [["a"], ["two"]]


def test_chain_flush_passes_released_rows_through_later_operators():
    chain = engine._Chain([toys.HoldAll(), toys.AddOne()])
    t = {}
    idx = np.arange(3)
    out = chain({"frames": np.zeros((3, 2, 2, 3), np.uint8), "index": idx, "pts": idx}, t, ["hold", "add"])
    assert len(out["index"]) == 0
    out = chain.flush(t, ["hold", "add"])
    assert out["index"].tolist() == [0, 1, 2] and out["held"].tolist() == [3, 3, 3]
    assert (out["frames"] == 1).all()          # AddOne ran on the released rows


def _expected(n_items=3, n=10):
    return {f"it{k}": np.arange(k * n, (k + 1) * n) for k in range(n_items)}


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("fused", [True, False])
def test_stateful_stage_gets_whole_items_in_order_and_fusion_keeps_output(tmp_path, fused):
    half = dict(cpus_per_actor=0.4)          # 5 actors on the 2 CPUs of the test's Ray
    stages = [stage("add", toys.AddOne, **half), stage("hold", toys.HoldAll, actors=2, **half),
              stage("x2", toys.Double, actors=2, **half)]
    sink = toys.CollectSink(tmp_path)
    job = engine.Job(toys.CountSource(items=4, n=7, batch=3), stages, sink, manifest=Manifest(tmp_path / "m"),
                     settings="s1", fuse=fused, progress=False)
    summary = engine.run(job)
    assert not summary.failed and summary.units == 28
    for key, idx in _expected(4, 7).items():
        got = toys.load(tmp_path, key)["columns"]
        assert got["index"].tolist() == idx.tolist()             # every row, in order
        assert (got["held"] == 7).all()                          # one actor held the whole item
        assert got["frames"].shape == (7, 8, 12, 3)              # x2 after the flush
        assert (got["frames"][:, 0, 0, 0] == idx % 200 + 1).all()
    latest = Manifest(tmp_path / "m").latest()
    assert {k: r["status"] for k, r in latest.items()} == {f"it{k}": "done" for k in range(4)}


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_resume_skips_done_items_and_reruns_the_rest(tmp_path):
    m = Manifest(tmp_path / "m")
    sink = toys.CollectSink(tmp_path)
    engine.run(engine.Job(toys.CountSource(items=2, n=5), [stage("add", toys.AddOne)], sink, manifest=m,
                          settings="s1", progress=False))
    first = os.path.getmtime(tmp_path / "it0.pkl")
    os.remove(tmp_path / "it1.pkl")           # its output is gone: it must be redone
    s = engine.run(engine.Job(toys.CountSource(items=3, n=5), [stage("add", toys.AddOne)], sink,
                              manifest=Manifest(tmp_path / "m"), settings="s1", progress=False))
    assert s.reused == 1 and s.items == 2
    assert os.path.getmtime(tmp_path / "it0.pkl") == first   # finished work is not rewritten
    assert toys.load(tmp_path, "it2")["columns"]["index"].tolist() == list(range(10, 15))
    # other settings: everything again
    s = engine.run(engine.Job(toys.CountSource(items=3, n=5), [stage("add", toys.AddOne)], sink,
                              manifest=Manifest(tmp_path / "m"), settings="s2", progress=False))
    assert s.reused == 0 and s.items == 3


CLUSTER_SCRIPT = r'''
import functools, sys, json
sys.path.insert(0, sys.argv[2])
import ray
from ray.cluster_utils import Cluster
from pipeline import engine
from pipeline.engine import StageSpec
from tests import engine_toys as toys
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
cluster.add_node(num_cpus=2, resources={"worker": 2})
ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": sys.argv[2]}})
cluster.wait_for_nodes()
head = ray.get_runtime_context().get_node_id()
stages = [StageSpec("add", functools.partial(toys.AddOne), resources={"worker": 1}, cpus_per_actor=0.5)]
s = engine.run(engine.Job(toys.CountSource(items=3, n=6), stages, toys.CollectSink(sys.argv[1]), progress=False))
out = {"failed": s.failed, "head": head, "nodes": [toys.load(sys.argv[1], f"it{k}")["node"] for k in range(3)],
       "index": [toys.load(sys.argv[1], f"it{k}")["columns"]["index"].tolist() for k in range(3)],
       "op_pids": sorted({int(p) for k in range(3) for p in toys.load(sys.argv[1], f"it{k}")["columns"]["pid"]})}
print("RESULT " + json.dumps(out))
ray.shutdown(); cluster.shutdown()
'''


@pytest.mark.slow
def test_two_node_cluster_writers_on_the_driver_node(tmp_path):
    """Operators run on the worker node (custom resource); writers and readers stay on the
    driver's node, whose local files the sink finalizes (no shared filesystem assumed)."""
    script = tmp_path / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, r.stdout[-2000:] + r.stderr[-3000:]
    import json
    out = json.loads(line[7:])
    assert out["failed"] == []
    assert out["nodes"] == [out["head"]] * 3
    assert out["index"] == [list(range(k * 6, k * 6 + 6)) for k in range(3)]


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_worker_that_dies_on_an_item_is_retried_with_smaller_tiles(tmp_path):
    """Item it1 kills its worker every time until told to shrink: the engine must not loop on
    Ray's restarts, but retry the item with the shrink hint, and write everything."""
    job = engine.Job(toys.CountSource(items=3, n=10, batch=5), [stage("die", toys.DieUnlessShrunk)],
                     toys.CollectSink(tmp_path), progress=False, log=lambda line: None)
    summary = engine.run(job)
    assert not summary.failed and summary.units == 30
    assert toys.load(tmp_path, "it1")["columns"]["index"].tolist() == list(range(10, 20))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_disk_full_is_one_line_without_a_crash(tmp_path, capsys):
    """A video job writing onto a 1 MiB filesystem: 'no space left' in one line, no crash."""
    from jobs import upscale_video
    from pipeline.synth import make_clip
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        src = make_clip(str(tmp_path / "in.mp4"), frames=48, width=320, height=192, gop=12)
        rc = upscale_video.main([src, str(mnt / "out.mkv"), "--model", "bicubic", "--scale", "2", "--encoder", "ffv1",
                                 "--segment-frames", "12", "--no-progress"])
        cap = capsys.readouterr()
        err = cap.out + cap.err
        assert rc == 1, err
        assert "no space left on" in err and "Traceback" not in err, err
    finally:
        subprocess.run(["umount", "-l", str(mnt)])     # lazy: a Ray worker may still hold a file there


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_writer_killed_mid_item_is_replaced_and_the_item_redone(tmp_path):
    job = engine.Job(toys.CountSource(items=3, n=6, batch=3), [stage("add", toys.AddOne)],
                     toys.DyingWriterSink(tmp_path), manifest=Manifest(tmp_path / "m"), settings="s",
                     progress=False, log=lambda line: None)
    summary = engine.run(job)
    assert (tmp_path / "writer-died").exists()
    assert not summary.failed and summary.units == 18
    for k in range(3):
        assert toys.load(tmp_path, f"it{k}")["columns"]["index"].tolist() == list(range(k * 6, k * 6 + 6))
