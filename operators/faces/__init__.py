"""The face route: detect on the LR frame, track, align, face SR, paste back (docs/batches.md)."""
