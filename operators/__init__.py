"""Batch transforms a stage runs. An operator owns its model, loads it once, and maps a batch
(dict of columns: frames uint8/uint16 (N,H,W,3) RGB, index, pts, ...) to a batch."""
