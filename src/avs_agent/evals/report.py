"""Reports: a run's summary as markdown, and the comparison of several runs (table, per-category
breakdown, a plot and a grid of the best and worst clips as overlays)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.evals.scoring import summarize
from avs_agent.tools.errors import UserError


class ReportError(UserError):
    """A run folder cannot be reported on."""


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_markdown(summary: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    cfg = config or {}
    lines = [
        f"# {summary.get('strategy', cfg.get('strategy', '?'))} on {summary.get('dataset', cfg.get('dataset', '?'))} / {summary.get('split', cfg.get('split', '?'))}",
        "",
        f"{summary['n_clips']} clips scored ({summary['n_visible']} with a visible source, {summary['n_offscreen']} off screen)"
        + ("" if summary.get("complete", True) else " - run not complete"),
        "",
        "| J | F | J visible | F visible | off-screen left empty | mIoU (top-k) | cIoU | AUC | s/clip |",
        "|---|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            _f(summary.get(k))
            for k in (
                "J",
                "F",
                "J_visible",
                "F_visible",
                "offscreen_empty",
                "mIoU",
                "cIoU",
                "AUC",
                "seconds_per_clip",
            )
        )
        + " |",
        "",
    ]
    if "avss_mIoU" in summary:
        lines += [
            f"AVSS class-wise: mIoU {_f(summary['avss_mIoU'])}, F {_f(summary['avss_F'])} (over classes present: {_f(summary['avss_mIoU_present'])} / {_f(summary['avss_F_present'])})",
            "",
        ]
    lines += [
        "## Per category",
        "",
        "| category | clips | J | F | off-screen left empty |",
        "|---|---|---|---|---|",
    ]
    for cat, c in summary.get("per_category", {}).items():
        off = f"{c['offscreen_empty']}/{c['n_offscreen']}" if c["n_offscreen"] else "-"
        lines.append(f"| {cat} | {c['n']} | {_f(c['J'])} | {_f(c['F'])} | {off} |")
    if summary.get("skipped"):
        lines += [
            "",
            f"Skipped {len(summary['skipped'])} clip(s):",
            *[f"- {s['key']}: {s['reason']}" for s in summary["skipped"]],
        ]
    return "\n".join(lines) + "\n"


def load_run(run: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(config, summary, rows) of a run folder; the summary is recomputed when missing."""
    from avs_agent.evals.runner import read_jsonl

    run = Path(run)
    if not (run / "config.json").is_file():
        raise ReportError(f"not a run folder (no config.json): {run}")
    config = json.loads((run / "config.json").read_text())
    rows = read_jsonl(run / "clips.jsonl")
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    else:
        summary = summarize(rows)
        summary.update(
            strategy=config.get("strategy"), dataset=config.get("dataset"), split=config.get("split")
        )
    return config, summary, rows


def _label(config: dict[str, Any], run: Path) -> str:
    llm = config.get("llm", {}).get("backend", "rules")
    return f"{config.get('strategy', '?')} ({llm}) [{run.name}]"


def compare_markdown(runs: list[Path]) -> tuple[str, list[tuple[Path, dict, dict, list]]]:
    loaded = [(Path(r), *load_run(Path(r))) for r in runs]
    lines = [
        "# Runs compared",
        "",
        "| run | dataset | clips | J | F | J visible | off-screen empty | mIoU | cIoU | AUC | LLM calls/clip | tokens/clip | s/clip |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run, cfg, s, _ in loaded:
        lines.append(
            f"| {_label(cfg, run)} | {cfg.get('dataset')}/{cfg.get('split')} | {s['n_clips']} | "
            + " | ".join(
                _f(
                    s.get(k),
                    3 if k not in ("llm_calls_per_clip", "tokens_per_clip", "seconds_per_clip") else 2,
                )
                for k in (
                    "J",
                    "F",
                    "J_visible",
                    "offscreen_empty",
                    "mIoU",
                    "cIoU",
                    "AUC",
                    "llm_calls_per_clip",
                    "tokens_per_clip",
                    "seconds_per_clip",
                )
            )
            + " |"
        )
    cats = sorted({c for _, _, s, _ in loaded for c in s.get("per_category", {})})
    lines += [
        "",
        "## J per category",
        "",
        "| category | " + " | ".join(_label(c, r) for r, c, _, _ in loaded) + " |",
        "|---|" + "---|" * len(loaded),
    ]
    for cat in cats:
        cells = []
        for _, _, s, _ in loaded:
            c = s.get("per_category", {}).get(cat)
            cells.append(f"{_f(c['J'])} ({c['n']})" if c else "-")
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", loaded


def plot_runs(loaded: list, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["J", "F", "J_visible", "offscreen_empty", "mIoU", "cIoU", "AUC"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / max(1, len(loaded))
    x = np.arange(len(keys))
    for i, (run, cfg, s, _) in enumerate(loaded):
        ax.bar(x + i * width, [float(s.get(k) or 0.0) for k in keys], width, label=_label(cfg, run))
    ax.set_xticks(x + width * (len(loaded) - 1) / 2, keys)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("runs compared")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlay_grid(run: Path, config: dict, rows: list[dict], path: Path, n: int = 3) -> Path | None:
    """The ``n`` best and ``n`` worst clips with a visible source (by J): the middle frame with the
    prediction in red and the ground truth's outline in green."""
    from PIL import Image

    from avs_agent.evals.datasets import load_dataset, read_prediction

    visible = sorted((r for r in rows if not r.get("gt_empty")), key=lambda r: -r["J"])
    if not visible:
        return None
    picks = visible[:n] + [r for r in visible[-n:] if r not in visible[:n]]
    try:
        ds = load_dataset(config["dataset"], config["root"], config["split"], on_missing="skip")
    except UserError:
        return None
    by_key = {s.key: s for s in ds}
    tiles = []
    for r in picks:
        sample = by_key.get(r["key"])
        if sample is None:
            continue
        t = len(sample.labels.gt_files) // 2
        gt = sample.labels.masks()[t]
        try:
            pred = read_prediction(ds, sample, Path(run) / "masks")[t] > 0.5
        except UserError:
            continue
        with Image.open(sample.inputs.frames[t]) as im:
            img = np.asarray(im.convert("RGB").resize((gt.shape[1], gt.shape[0])), dtype=np.float32)
        img[pred] = 0.5 * img[pred] + 0.5 * np.array([255, 0, 0])
        edge = gt & ~(np.roll(gt, 1, 0) & np.roll(gt, -1, 0) & np.roll(gt, 1, 1) & np.roll(gt, -1, 1))
        img[edge] = (0, 255, 0)
        tiles.append((img.astype(np.uint8), f"{r['name']} J={r['J']:.2f}"))
    if not tiles:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(tiles), n)
    rows_n = (len(tiles) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3 * cols, 3.2 * rows_n), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, title) in zip(axes.flat, tiles, strict=False):
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
    fig.suptitle(
        f"{config.get('strategy')}: best (top) and worst (bottom); red = prediction, green = truth",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report(runs: list[str | Path], out: str | Path | None = None) -> tuple[str, list[Path]]:
    """Write ``report.md``, ``report.png`` and one ``grid_<run>.png`` per run into ``out`` (default:
    ``<first run>/report``). Returns the markdown and the files written."""
    if not runs:
        raise ReportError("give at least one run folder")
    md, loaded = compare_markdown([Path(r) for r in runs])
    out = Path(out) if out else Path(runs[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md"]
    (out / "report.md").write_text(md)
    try:
        files.append(plot_runs(loaded, out / "report.png"))
        for run, cfg, _, rows in loaded:
            grid = overlay_grid(run, cfg, rows, out / f"grid_{run.name}.png")
            if grid is not None:
                files.append(grid)
    except ImportError:
        md += "\n(plots skipped: matplotlib is not installed; pip install avs-agent[eval])\n"
    return md, files
