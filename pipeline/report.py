"""End-of-run report for the image and dataset jobs: counts by status, throughput, failures with
their reasons and, where a reference exists, PSNR/SSIM per item against bicubic, as text (printed
and saved), JSON, and two figures saved beside them: PSNR per item (model vs bicubic) and
before/after crops (LR-bicubic | output | reference) of the worst and best items.

Rows are plain dicts (the manifest's latest row per item serves): item, status, psnr, ssim,
psnr_bicubic, ssim_bicubic, seconds, error; missing keys are None."""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

COLUMNS = ("item", "status", "psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "seconds", "error")
BAR_LIMIT = 60            # above this many items the PSNR figure plots sorted curves, not bars


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict], wall_seconds: float | None = None) -> dict:
    """Counts by status, mean metrics over the items that have them, throughput, failures."""
    counts = Counter(str(r.get("status") or "unknown") for r in rows)
    ps = [_num(r.get("psnr")) for r in rows]
    pb = [_num(r.get("psnr_bicubic")) for r in rows]
    paired = [(a, b) for a, b in zip(ps, pb) if a is not None and b is not None
              and math.isfinite(a) and math.isfinite(b)]
    secs = [_num(r.get("seconds")) for r in rows]
    busy = sum(s for s in secs if s is not None)
    done = counts.get("done", 0)
    wall = wall_seconds if wall_seconds is not None else busy
    return {
        "items": len(rows),
        "by_status": dict(sorted(counts.items())),
        "psnr": _mean(ps), "ssim": _mean(_num(r.get("ssim")) for r in rows),
        "psnr_bicubic": _mean(pb), "ssim_bicubic": _mean(_num(r.get("ssim_bicubic")) for r in rows),
        "psnr_gain": float(np.mean([a - b for a, b in paired])) if paired else None,
        "with_reference": sum(p is not None for p in ps),
        "seconds": wall,
        "items_per_second": done / wall if wall else None,
        "failures": [{"item": r.get("item"), "error": r.get("error")} for r in rows
                     if str(r.get("status")) == "failed"],
    }


def _fmt(v, spec=".2f") -> str:
    f = _num(v)
    if f is None:
        return "-"
    if math.isinf(f):
        return "inf"
    return format(f, spec)


def format_table(rows: list[dict], summary: dict | None = None, max_rows: int | None = None) -> str:
    """A plain-text table (one line per item, worst PSNR first when there are metrics) and the summary."""
    summary = summary or summarize(rows)
    has_q = summary["with_reference"] > 0
    order = sorted(rows, key=lambda r: (_num(r.get("psnr")) is None, _num(r.get("psnr")) or 0.0)) if has_q else rows
    shown = order if max_rows is None else order[:max_rows]
    width = max([len("item")] + [len(str(r.get("item", ""))) for r in shown])
    width = min(width, 60)
    head = f"{'item':<{width}}  {'status':<8}"
    if has_q:
        head += f"  {'PSNR':>7}  {'SSIM':>6}  {'bicubic':>7}  {'SSIM':>6}  {'gain':>6}"
    head += f"  {'sec':>7}  error"
    lines = [head, "-" * len(head)]
    for r in shown:
        name = str(r.get("item", ""))
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        line = f"{name:<{width}}  {str(r.get('status') or '-'):<8}"
        if has_q:
            p, b = _num(r.get("psnr")), _num(r.get("psnr_bicubic"))
            gain = p - b if p is not None and b is not None and math.isfinite(p) and math.isfinite(b) else None
            line += (f"  {_fmt(p):>7}  {_fmt(r.get('ssim'), '.4f'):>6}  {_fmt(b):>7}"
                     f"  {_fmt(r.get('ssim_bicubic'), '.4f'):>6}  {_fmt(gain, '+.2f'):>6}")
        line += f"  {_fmt(r.get('seconds')):>7}  {(r.get('error') or '')}"
        lines.append(line.rstrip())
    if max_rows is not None and len(order) > max_rows:
        lines.append(f"... {len(order) - max_rows} more items in report.txt")
    lines.append("")
    lines.append(summary_text(summary))
    return "\n".join(lines)


def summary_text(s: dict) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in s["by_status"].items()) or "none"
    out = [f"{s['items']} items: {counts}"]
    if s.get("items_per_second") is not None:
        out.append(f"time {s['seconds']:.1f} s, {s['items_per_second']:.2f} items/s")
    if s["with_reference"]:
        out.append(f"quality on {s['with_reference']} items with a reference: PSNR {_fmt(s['psnr'])} dB, "
                   f"SSIM {_fmt(s['ssim'], '.4f')}; bicubic {_fmt(s['psnr_bicubic'])} dB, "
                   f"SSIM {_fmt(s['ssim_bicubic'], '.4f')}; gain {_fmt(s['psnr_gain'], '+.2f')} dB")
    for f in s["failures"]:
        out.append(f"failed: {f['error'] or f['item']}")
    return "\n".join(out)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else (None if math.isnan(f) else ("inf" if f > 0 else "-inf"))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    return str(v)


# ------------------------------------------------------------------------------ figures

def plot_quality(rows: list[dict], path) -> Path | None:
    """PSNR per item, model vs bicubic: bars up to BAR_LIMIT items, sorted curves beyond."""
    pts = [(str(r.get("item")), _num(r.get("psnr")), _num(r.get("psnr_bicubic"))) for r in rows]
    pts = [(n, p, b) for n, p, b in pts if p is not None and math.isfinite(p)]
    if not pts:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [Path(n).name for n, _, _ in pts]
    p = np.array([x for _, x, _ in pts])
    b = np.array([np.nan if x is None or not math.isfinite(x) else x for _, _, x in pts])
    if len(pts) <= BAR_LIMIT:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(pts) + 2), 4.2))
        x = np.arange(len(pts))
        ax.bar(x - 0.2, b, 0.4, label=f"bicubic (mean {np.nanmean(b):.2f} dB)" if np.isfinite(b).any() else "bicubic",
               color="#9aa5b1")
        ax.bar(x + 0.2, p, 0.4, label=f"model (mean {p.mean():.2f} dB)", color="#1f77b4")
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        lo = np.nanmin(np.concatenate([p, b[np.isfinite(b)]])) if np.isfinite(b).any() else p.min()
        ax.set_ylim(max(0.0, lo - 3), None)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        order = np.argsort(p)
        ax.plot(p[order], label=f"model (mean {p.mean():.2f} dB)", color="#1f77b4")
        if np.isfinite(b).any():
            ax.plot(b[order], ".", ms=2, label=f"bicubic (mean {np.nanmean(b):.2f} dB)", color="#9aa5b1")
        ax.set_xlabel(f"items sorted by model PSNR ({len(pts)})")
    ax.set_ylabel("PSNR (dB, Y, shaved)")
    ax.set_title("PSNR per item: model vs bicubic")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def detail_window(ref: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the `size` square with the most detail (gradient energy) in the reference: where
    an SR model differs from bicubic, rather than a flat sky."""
    import cv2
    g = ref.astype(np.float32)
    if g.ndim == 3:
        g = g.mean(-1)
    h, w = g.shape
    if h <= size or w <= size:
        return 0, 0
    e = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    box = cv2.boxFilter(e, -1, (size, size), normalize=False, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    box = box[: h - size + 1, : w - size + 1]
    y, x = np.unravel_index(int(np.argmax(box)), box.shape)
    return int(y), int(x)


def pick_items(rows: list[dict], n: int) -> list[tuple[str, str]]:
    """[(label, item)] for the n worst and n best items by PSNR (an item is shown once)."""
    scored = [(p, r.get("item")) for r in rows
              if (p := _num(r.get("psnr"))) is not None and math.isfinite(p)]
    scored.sort(key=lambda t: t[0])
    worst = [("worst", it) for _, it in scored[:n]]
    seen = {it for _, it in worst}
    best = [("best", it) for _, it in reversed(scored[-n:]) if it not in seen]
    return worst + best


def _as_u8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, 2)
    return a


def plot_crops(rows: list[dict], crops, path, n: int = 3, size: int = 96) -> Path | None:
    """Rows of (LR-bicubic | output | reference) crops for the n worst and n best items.

    `crops`: {item: (bicubic, output, reference)} or a callable row -> that triple (or None), the
    row being the item's dict (with whatever extra keys the caller put in it: output, path...), so
    the caller loads images only for the items shown; arrays are HR-sized uint8/uint16 RGB. An item
    whose images cannot be loaded is left out of the figure with a warning."""
    chosen = pick_items(rows, n)
    by_item = {r.get("item"): r for r in rows}
    triples = []
    for label, item in chosen:
        try:
            t = crops(by_item[item]) if callable(crops) else (crops or {}).get(item)
        except Exception as e:      # noqa: BLE001 - a figure is not worth failing the report for
            warnings.warn(f"crops: {item} left out ({(str(e).splitlines() or [type(e).__name__])[0]})")
            t = None
        if t is not None:
            triples.append((label, item, t))
    if not triples:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(triples), 3, figsize=(7.5, 2.6 * len(triples)), squeeze=False)
    for i, (label, item, (bic, out, ref)) in enumerate(triples):
        bic, out, ref = _as_u8(bic), _as_u8(out), _as_u8(ref)
        h = min(a.shape[0] for a in (bic, out, ref))
        w = min(a.shape[1] for a in (bic, out, ref))
        s = min(size, h, w)
        y, x = detail_window(ref[:h, :w], s)
        r = by_item.get(item, {})
        titles = [f"bicubic {_fmt(r.get('psnr_bicubic'))} dB", f"output {_fmt(r.get('psnr'))} dB", "reference"]
        for j, (img, title) in enumerate(zip((bic, out, ref), titles)):
            ax = axes[i, j]
            ax.imshow(img[y:y + s, x:x + s], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(f"{label}\n{Path(str(item)).name}", fontsize=8)
    fig.suptitle("before / after (crop with the most detail)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ all of it

def write_report(path_dir, rows: list[dict], crops: Mapping | Callable | None = None, n_crops: int = 3,
                 wall_seconds: float | None = None, extra: dict | None = None, echo: bool = True) -> dict:
    """report.json, report.txt, quality.png and crops.png (the figures when there are metrics /
    crops) in `path_dir`; prints the summary table. Returns {name: path} and the summary.

    JSON: infinite PSNR (output identical to the reference) is written as the string "inf"."""
    d = Path(path_dir)
    d.mkdir(parents=True, exist_ok=True)
    rows = [{k: r.get(k) for k in COLUMNS} | {k: v for k, v in r.items() if k not in COLUMNS} for r in rows]
    summary = summarize(rows, wall_seconds)
    paths = {}
    text = format_table(rows, summary)
    _write_text(d / "report.txt", text + "\n")
    paths["report.txt"] = d / "report.txt"
    _write_text(d / "report.json", json.dumps(_jsonable({"summary": summary, "items": rows, **(extra or {})}),
                                              indent=1) + "\n")
    paths["report.json"] = d / "report.json"
    q = plot_quality(rows, d / "quality.png")
    if q:
        paths["quality.png"] = q
    if crops is not None:
        c = plot_crops(rows, crops, d / "crops.png", n=n_crops)
        if c:
            paths["crops.png"] = c
    if echo:
        print(format_table(rows, summary, max_rows=40))
        print("report: " + ", ".join(str(p) for p in paths.values()))
    return {"paths": paths, "summary": summary}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
