"""The face route: detect on the LR frame, track, align, face SR, paste back (docs/batches.md).

detect.FaceDetector (YuNet, shipped in yunet/) -> track.FaceTracker -> align.FaceAlign -> the
background upscale -> sr.FaceSR -> paste.FacePaste; chain.face_stages() builds that list of stages."""
