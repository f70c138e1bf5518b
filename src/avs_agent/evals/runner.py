"""The eval runner: dataset -> strategy -> scorer, resumable, with every output on disk.

A run folder ``RUN`` holds:

* ``config.json``: what ran (dataset, root, split, strategy, limit, the full settings, their
  fingerprint, package versions, git commit, prompt hashes), written once at the start.
* ``masks/``: predicted masks, PNG, in the dataset's own layout (S4:
  ``masks/{category}/{name}/{name}_{i}.png``, 0/255), each written atomically.
* ``traces.jsonl``: one line per clip, the answer with its trace.
* ``clips.jsonl``: one line per finished clip, its scores and stats. A clip counts as finished only
  when its line is here; masks and trace are written before it.
* ``summary.json``, ``summary.md``: computed from ``clips.jsonl`` in dataset order (so a resumed run
  gives exactly the same summary), written atomically.

Killed at any moment, ``--resume`` drops a torn last line, skips finished clips and goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.agent.prompts import prompt_hashes
from avs_agent.evals import datasets as D
from avs_agent.evals.scoring import score_clip, summarize
from avs_agent.evals.strategies import get_strategy
from avs_agent.tools.errors import UserError

DEFAULT_CACHE_DIR = Path("~/.cache/avs-agent/perception")
RUN_VERSION = 1


class RunError(UserError):
    """The run folder cannot be used as asked (exists without --resume, or holds another config)."""


# ----------------------------------------------------------------------------- files


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Valid lines of a JSONL file (a torn or garbled line, e.g. after a kill, is left out)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def _repair_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    if path.is_file():
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _append(path: Path, item: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(item) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- config


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_config(
    dataset: str, root: Path, split: str, strategy: str, limit: int | None, on_missing: str, settings: Any
) -> dict[str, Any]:
    import numpy

    from avs_agent.tools.cache import settings_fingerprint

    return {
        "version": RUN_VERSION,
        "dataset": dataset,
        "root": str(Path(root).resolve()),
        "split": split,
        "strategy": strategy,
        "limit": limit,
        "on_missing": on_missing,
        "settings": settings.model_dump(mode="json"),
        "settings_fingerprint": settings_fingerprint(settings.tool_config()),
        "agent": settings.agent.model_dump(mode="json"),
        "llm": {
            "backend": settings.llm.backend,
            "model": settings.llm.model if settings.llm.backend != "rules" else None,
        },
        "prompts": prompt_hashes(),
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


SAME_RUN_KEYS = ("dataset", "root", "split", "strategy", "limit", "settings_fingerprint", "agent", "llm")
"""What a resumed run must share with the run it continues (the agent's decision settings included:
a resume never mixes clips decided under different parameters)."""


# ----------------------------------------------------------------------------- one clip


def solve_sample(
    ds: D.Dataset, sample: D.Sample, strategy_name: str, settings: Any, toolset: Any, masks_root: Path
) -> tuple[dict, dict]:
    """Run the strategy on one sample, write its masks, score it. Returns (row, trace record)."""
    strategy = get_strategy(strategy_name)
    clip = sample.inputs.load(aspect=settings.media.aspect, max_side=settings.media.max_side)
    t0 = time.perf_counter()
    if strategy.needs_label:
        answer = strategy.solve(clip, toolset, settings, label=sample.labels.category)
    else:
        answer = strategy.solve(clip, toolset, settings)
    seconds = time.perf_counter() - t0
    classes = _avss_classes(ds, answer) if ds.semantic else None
    D.write_prediction(ds, sample, masks_root, answer.masks, classes)
    pred = D.read_prediction(ds, sample, masks_root)
    pred_classes = D.read_prediction(ds, sample, masks_root, semantic=True) if ds.semantic else None
    row = score_clip(sample, pred, sample.labels.masks(), pred_classes)
    stats = dict(answer.stats)
    stats.setdefault("llm_calls", 0)
    stats["tokens"] = int(stats.get("llm_tokens", stats.get("tokens", 0)) or 0)
    row.update({"seconds": round(seconds, 4), "labels": answer.labels, "stats": _jsonable(stats)})
    trace = {
        "key": sample.key,
        **_jsonable(
            answer.to_dict(mask_files=[str(masks_root / r) for r in sample.pred_files][: len(answer.frames)])
        ),
    }
    return row, trace


def _avss_classes(ds: D.Dataset, answer: Any) -> list[int]:
    names = [n.lower().replace("_", " ") for n in ds.class_names]
    out = []
    for fr in answer.frames:
        label = (fr.labels[0] if fr.labels else "").lower().replace("_", " ")
        out.append(names.index(label) if label in names else -1)
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))


# ----------------------------------------------------------------------------- workers

_WORKER: dict[str, Any] = {}


def _worker_init(
    settings_json: str,
    dataset: str,
    root: str,
    split: str,
    on_missing: str,
    limit: int | None,
    cache_dir: str | None,
) -> None:
    from avs_agent.agent.settings import Settings

    settings = Settings(**json.loads(settings_json))
    _WORKER.update(
        settings=settings,
        ds=D.load_dataset(dataset, root, split, on_missing, limit),
        toolset=_toolset(settings, cache_dir),
    )


def _worker_solve(key: str, strategy: str, masks_root: str) -> tuple[dict, dict]:
    ds = _WORKER["ds"]
    sample = next(s for s in ds if s.key == key)
    return solve_sample(ds, sample, strategy, _WORKER["settings"], _WORKER["toolset"], Path(masks_root))


def _toolset(settings: Any, cache_dir: str | Path | None) -> Any:
    from avs_agent.tools.wiring import get_toolset

    toolset = get_toolset(settings.tool_config())
    if cache_dir is None:
        return toolset
    from avs_agent.tools.cache import cached_toolset, settings_fingerprint

    return cached_toolset(toolset, cache_dir, settings_fingerprint(settings.tool_config()))


# ----------------------------------------------------------------------------- the run


def run_eval(
    dataset: str,
    root: str | Path,
    split: str,
    strategy: str,
    out: str | Path,
    settings: Any,
    *,
    limit: int | None = None,
    workers: int = 1,
    resume: bool = False,
    on_missing: str = "error",
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    toolset: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``strategy`` over a dataset split into the run folder ``out``; returns the summary.

    ``cache_dir=None`` turns the perception cache off. ``toolset`` (tests) replaces the settings'
    toolset in this process (workers > 1 always build their own).
    """
    get_strategy(strategy)  # unknown names fail before any work
    # a dataset that cannot be read fails before the run folder is written (a corrected retry then
    # starts afresh instead of being told the folder holds a run)
    ds = D.load_dataset(dataset, root, split, on_missing=on_missing, limit=limit)
    out = Path(out)
    config = make_config(dataset, Path(root), split, strategy, limit, on_missing, settings)
    cfg_path = out / "config.json"
    if cfg_path.is_file():
        if not resume:
            raise RunError(
                f"run folder {out} already holds a run: pass --resume to finish it, or choose another --out"
            )
        old = json.loads(cfg_path.read_text())
        diff = [k for k in SAME_RUN_KEYS if old.get(k) != config.get(k)]
        if diff:
            raise RunError(
                f"run folder {out} was started with a different {', '.join(diff)}: cannot resume it with these options"
            )
        config = old
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(cfg_path, json.dumps(config, indent=2))
    masks_root = out / "masks"
    clips_path, traces_path = out / "clips.jsonl", out / "traces.jsonl"
    done = {r["key"]: r for r in _repair_jsonl(clips_path)}
    _repair_jsonl(traces_path)
    pending = [s for s in ds if s.key not in done]
    skipped = list(ds.skipped)
    cache_arg = str(Path(cache_dir).expanduser()) if cache_dir is not None else None

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"[bold]{strategy}[/] on {dataset}/{split}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
        transient=False,
    )

    def finish(sample_key: str, row: dict, trace: dict) -> None:
        _append(traces_path, trace)
        _append(clips_path, row)
        done[sample_key] = row

    with bar:
        task = bar.add_task("clips", total=len(ds), completed=len(ds) - len(pending))
        if workers <= 1 or len(pending) <= 1:
            ts = toolset if toolset is not None else _toolset(settings, cache_arg)
            for sample in pending:
                try:
                    row, trace = solve_sample(ds, sample, strategy, settings, ts, masks_root)
                except D.DatasetError as exc:
                    if on_missing == "error":
                        raise
                    skipped.append((sample.key, str(exc)))
                    bar.advance(task)
                    continue
                finish(sample.key, row, trace)
                bar.advance(task)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            init = (
                json.dumps(settings.model_dump(mode="json")),
                dataset,
                str(root),
                split,
                on_missing,
                limit,
                cache_arg,
            )
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=init
            ) as pool:
                futures = {
                    pool.submit(_worker_solve, s.key, strategy, str(masks_root)): s.key for s in pending
                }
                for fut in as_completed(futures):
                    key = futures[fut]
                    try:
                        row, trace = fut.result()
                    except D.DatasetError as exc:
                        if on_missing == "error":
                            raise
                        skipped.append((key, str(exc)))
                        bar.advance(task)
                        continue
                    finish(key, row, trace)
                    bar.advance(task)

    order = {s.key: i for i, s in enumerate(ds)}
    rows = sorted((r for k, r in done.items() if k in order), key=lambda r: order[r["key"]])
    summary = summarize(rows, skipped)
    summary.update(
        {
            "run": str(out),
            "strategy": strategy,
            "dataset": dataset,
            "split": split,
            "complete": len(rows) == len(ds),
        }
    )
    write_summary(out, summary, config)
    return summary


def write_summary(out: Path, summary: dict[str, Any], config: dict[str, Any]) -> None:
    from avs_agent.evals.report import summary_markdown

    atomic_write(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write(out / "summary.md", summary_markdown(summary, config))


def rescore(out: str | Path) -> dict[str, Any]:
    """Re-score a run's stored masks against the dataset (no model runs) and rewrite its summary."""
    from avs_agent.evals.scoring import score_dir

    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    ds = D.load_dataset(
        config["dataset"],
        config["root"],
        config["split"],
        config.get("on_missing", "error"),
        config.get("limit"),
    )
    old = {r["key"]: r for r in read_jsonl(out / "clips.jsonl")}
    rows, _ = score_dir(ds, out / "masks", on_missing="skip")
    for r in rows:
        for k in ("seconds", "labels", "stats"):
            if k in old.get(r["key"], {}):
                r[k] = old[r["key"]][k]
    summary = summarize(rows, ds.skipped)
    summary.update(
        {
            "run": str(out),
            "strategy": config["strategy"],
            "dataset": config["dataset"],
            "split": config["split"],
            "complete": len(rows) == len(ds),
        }
    )
    write_summary(out, summary, config)
    return summary
