"""Face tracking: linking, confirmation, gap bridging, smoothing, hold-back and flush."""
import cv2
import numpy as np

from operators.base import concat
from operators.faces.detect import FaceDetector
from operators.faces.track import FaceTracker
from tests.conftest import shared_path

cv2.setNumThreads(1)
LANDMARKS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])


def detections(faces: list[list[tuple]], start: int = 0) -> dict:
    """Detector columns for frames whose faces are the given boxes (landmarks placed in each box),
    plus `index` and a `frames` column whose pixel value is the frame number."""
    n, k = len(faces), max(len(f) for f in faces)
    b = {"frames": (np.arange(start, start + n) % 256).astype(np.uint8)[:, None, None, None].repeat(3, -1).repeat(4, 1).repeat(4, 2),
         "index": np.arange(start, start + n, dtype=np.int64), "faces_count": np.array([len(f) for f in faces], np.int32),
         "faces_box": np.zeros((n, k, 4), np.float32), "faces_landmarks": np.zeros((n, k, 5, 2), np.float32),
         "faces_score": np.full((n, k), 0.9, np.float32)}
    for i, f in enumerate(faces):
        for j, (x0, y0, x1, y1) in enumerate(f):
            b["faces_box"][i, j] = x0, y0, x1, y1
            b["faces_landmarks"][i, j] = LANDMARKS * [x1 - x0, y1 - y0] + [x0, y0]
    return b


def run(tracker: FaceTracker, batch: dict, step: int = 4) -> tuple[dict, list[int]]:
    """Feed the batch in chunks of `step` rows, then flush; returns all rows and rows per call."""
    n = len(batch["index"])
    outs = [tracker({k: v[i:i + step] for k, v in batch.items()}) for i in range(0, n, step)]
    outs.append(tracker.flush())
    return concat(outs), [0 if o is None else len(o["index"]) for o in outs]


def moving(n=30, x=10.0, vx=5.0) -> list[list[tuple]]:
    return [[(x + vx * t, 20.0, x + vx * t + 30, 56.0)] for t in range(n)]


def test_one_frame_false_positive_dropped_and_rows_kept_in_order():
    faces = moving()
    faces[12] = faces[12] + [(200.0, 100.0, 230.0, 136.0)]
    out, per_call = run(FaceTracker(), detections(faces))
    assert out["index"].tolist() == list(range(30))
    assert (out["frames"][:, 0, 0, 0] == np.arange(30)).all()          # rows and columns travel intact
    assert out["faces_count"].tolist() == [1] * 30
    assert len(set(out["faces_track"][:, 0].tolist())) == 1 and out["faces_track"][0, 0] == 0
    assert per_call[0] < 4 and sum(per_call) == 30                     # rows held back, the rest flushed


def test_gap_bridged_by_interpolation():
    faces = moving()
    for t in (7, 8, 9):
        faces[t] = []
    out, _ = run(FaceTracker(max_gap=5), detections(faces))
    assert out["faces_count"].tolist() == [1] * 30
    truth = np.array([f[0] for f in moving()], np.float32)
    assert np.abs(out["faces_box"][:, 0] - truth).max() < 1e-3          # linear motion: exact
    assert len(set(out["faces_track"][:, 0].tolist())) == 1
    # a gap longer than max_gap splits the track and leaves the frames empty
    out, _ = run(FaceTracker(max_gap=2), detections(faces))
    assert out["faces_count"][7:10].tolist() == [0, 0, 0]


def test_smoothing_reduces_jitter_without_lag():
    rng = np.random.default_rng(1)
    truth = np.array([f[0] for f in moving(40, vx=3.0)])
    noisy = truth + rng.normal(0, 1.5, truth.shape)
    out, _ = run(FaceTracker(smooth=3), detections([[tuple(b)] for b in noisy]))
    got = out["faces_box"][:, 0].astype(np.float64)
    err_raw, err_smooth = np.abs(noisy - truth).mean(), np.abs(got - truth).mean()
    assert err_smooth < 0.7 * err_raw
    assert abs((got - truth)[5:-5, 0].mean()) < 0.3                    # no lag behind the motion
    lm = out["faces_landmarks"][:, 0]
    truth_lm = LANDMARKS * [30, 36] + truth[:, None, :2]
    assert np.abs(lm - truth_lm).mean() < 0.7 * np.abs(LANDMARKS * (noisy[:, None, 2:] - noisy[:, None, :2]) + noisy[:, None, :2] - truth_lm).mean()


def test_two_crossing_paths_keep_their_ids():
    a = [(10.0 + 6 * t, 20.0, 40.0 + 6 * t, 56.0) for t in range(20)]
    b = [(150.0 - 6 * t, 60.0, 180.0 - 6 * t, 96.0) for t in range(20)]
    out, _ = run(FaceTracker(), detections([[x, y] for x, y in zip(a, b)]))
    ids = out["faces_track"]
    first_a = ids[0][np.argmin(out["faces_box"][0, :, 1])]
    for t in range(20):
        row_a = np.argmin(np.where(np.arange(ids.shape[1]) < out["faces_count"][t], out["faces_box"][t, :, 1], 1e9))
        assert ids[t, row_a] == first_a


def test_item_end_keeps_a_face_entering_in_the_last_frames_and_resets():
    faces = [[] for _ in range(10)]
    faces[9] = [(10.0, 10.0, 40.0, 46.0)]
    tracker = FaceTracker()
    out, _ = run(tracker, detections(faces, start=100))
    assert out["faces_count"].tolist() == [0] * 9 + [1]
    assert out["faces_track"][9, 0] == 109 * 1000                   # id from the global frame index
    out2, _ = run(tracker, detections(moving(6), start=500))         # next item: fresh state
    assert set(out2["faces_track"][:, 0].tolist()) == {500 * 1000}


def test_still_images_need_no_confirmation_and_wait_for_nothing():
    faces = [[(10.0, 10.0, 40.0, 46.0)], [], [(12.0, 10.0, 42.0, 46.0), (100.0, 10.0, 130.0, 46.0)]]
    tracker = FaceTracker(min_track_length=1, max_gap=0, smooth=0, link=False)
    b = detections(faces)
    out = tracker(b)
    assert out["faces_count"].tolist() == [1, 0, 2]
    assert np.array_equal(out["faces_box"], b["faces_box"])
    assert out["faces_track"][2].tolist() == [2000, 2001]            # unlinked: one track per photo face
    assert tracker.flush() is None


def test_moving_real_face_keeps_one_track():
    """A face photo translated across 30 frames of a 160x120 clip, through the detector."""
    im = np.ascontiguousarray(cv2.imread(str(shared_path("data", "faces", "kair_real_faces", "face_04.png")),
                                         cv2.IMREAD_COLOR)[..., ::-1])
    face = cv2.resize(im, (48, 48), interpolation=cv2.INTER_AREA)    # face about 14 px wide
    rng = np.random.default_rng(0)
    bg = np.clip(rng.normal(100, 10, (120, 160, 3)), 0, 255).astype(np.uint8)
    frames = np.stack([bg.copy() for _ in range(30)])
    for t in range(30):
        x, y = 5 + 3.5 * t, 30 + np.sin(t / 5) * 10
        m = np.float32([[1, 0, x], [0, 1, y]])
        cv2.warpAffine(face, m, (160, 120), frames[t], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
    det = FaceDetector()({"frames": frames, "index": np.arange(30, dtype=np.int64)})
    assert (det["faces_count"] >= 1).sum() >= 28
    out, _ = run(FaceTracker(), det, step=8)
    assert out["faces_count"].tolist() == [1] * 30
    assert len(set(out["faces_track"][:, 0].tolist())) == 1
    cx = (out["faces_box"][:, 0, 0] + out["faces_box"][:, 0, 2]) / 2
    assert np.all(np.diff(cx) > 1.5) and np.all(np.diff(cx) < 5.5)    # follows the 3.5 px/frame motion


def test_a_cut_to_a_close_up_starts_a_new_track():
    """A small face seen twice just before a cut must not be bridged into a close-up nearby
    (seen on the Hamilton clip: a raised hand detected in two frames, then a close-up)."""
    faces = [[(200.0, 43.0, 208.0, 55.0)] if t in (4, 5) else [] for t in range(10)]
    faces += [[(190.0 - 5 * t, 0.0, 264.0 - 5 * t, 110.0)] for t in range(10)]
    out, _ = run(FaceTracker(), detections(faces))
    assert out["faces_count"].tolist() == [0] * 10 + [1] * 10          # the two-frame one dropped, nothing bridged
    assert set(out["faces_track"][10:, 0].tolist()) == {10 * 1000}


def test_hamilton_clip_performer_hand_and_cut():
    """Real footage (320x180, frames 10-25): the performer and a small face at the left keep one
    track each, the raised hand YuNet scores 0.72-0.83 in frames 14-15 is dropped, and the
    close-up after the cut at frame 20 is a new track."""
    import av
    path = shared_path("data", "video", "face_recognition", "short_hamilton_clip.mp4")
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(26), c.decode(video=0))][10:]
    lr = np.stack([cv2.resize(f, (320, 180), interpolation=cv2.INTER_AREA) for f in frames])
    det = FaceDetector()({"frames": lr, "index": np.arange(10, 26, dtype=np.int64)})
    out, _ = run(FaceTracker(), det, step=6)
    ids = [set(out["faces_track"][t, :out["faces_count"][t]].tolist()) for t in range(16)]
    assert all(len(s) == 2 for s in ids[:10]) and len(set.union(*ids[:10])) == 2       # frames 10-19
    assert all(len(s) >= 1 for s in ids[10:]) and not set.union(*ids[10:]) & set.union(*ids[:10])
