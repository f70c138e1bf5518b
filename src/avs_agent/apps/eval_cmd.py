"""`avs-agent score | eval | report`: registered on the main Typer app by ``register(app)``.

User errors raise ``tools.errors.UserError`` subclasses; the main CLI prints them as one line and
exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from avs_agent.apps.options import ConfigOpt, ProfileOpt, SetOpt, settings_from

DatasetOpt = Annotated[str, typer.Option("--dataset", help="avsbench-s4, avsbench-ms3, avss or v3")]
RootOpt = Annotated[Path, typer.Option("--root", help="the dataset's folder, as published")]
SplitOpt = Annotated[
    str, typer.Option("--split", help="train, val or test (V3: seen_train, seen_val, unseen; test = unseen)")
]
MissingOpt = Annotated[
    str,
    typer.Option(
        "--on-missing",
        help="error: stop at a missing or unreadable file; skip: leave the clip out and count it",
    ),
]


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    from avs_agent.evals.datasets import DatasetError

    if value not in choices:
        raise DatasetError(f"unknown {what} '{value}': use one of {', '.join(choices)}")


def score(
    pred_dir: Annotated[
        Path, typer.Argument(help="predicted masks in the dataset's layout (e.g. RUN/masks)")
    ],
    dataset: DatasetOpt,
    root: RootOpt,
    split: SplitOpt = "test",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    on_missing: MissingOpt = "error",
) -> None:
    """Score masks produced by any model against a dataset with the official protocol."""
    from avs_agent.evals.datasets import DATASETS, load_dataset
    from avs_agent.evals.report import summary_markdown
    from avs_agent.evals.scoring import score_dir

    _check_choice(dataset, DATASETS, "dataset")
    _check_choice(on_missing, ("error", "skip"), "--on-missing")
    ds = load_dataset(dataset, root, split, on_missing=on_missing)  # type: ignore[arg-type]
    _, summary = score_dir(ds, pred_dir, on_missing=on_missing)
    summary.update(dataset=dataset, split=split, strategy=str(pred_dir))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(summary_markdown(summary))


def eval_cmd(
    dataset: DatasetOpt,
    root: RootOpt,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="audio-cls, audio-caption, vcap-acls, acap-vcls, openavs, segment-all, agent, agent-per-frame, oracle-label",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="run folder to write")],
    split: SplitOpt = "test",
    limit: Annotated[int | None, typer.Option("--limit", help="only the first N clips")] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="worker processes (each loads its own models)")
    ] = 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="finish an interrupted run in --out, skipping finished clips")
    ] = False,
    on_missing: MissingOpt = "error",
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="perception cache folder (default ~/.cache/avs-agent/perception)"),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="run every tool, read and write no perception cache")
    ] = False,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Run a strategy over a dataset split: masks, per-clip scores and traces, and a summary in --out."""
    from avs_agent.evals.datasets import DATASETS
    from avs_agent.evals.report import summary_markdown
    from avs_agent.evals.runner import DEFAULT_CACHE_DIR, run_eval
    from avs_agent.evals.strategies import get_strategy

    _check_choice(dataset, DATASETS, "dataset")
    _check_choice(on_missing, ("error", "skip"), "--on-missing")
    get_strategy(strategy)
    if limit is not None and limit < 1:
        from avs_agent.evals.datasets import DatasetError

        raise DatasetError("--limit must be at least 1")
    settings = settings_from(profile, config, overrides)
    summary = run_eval(
        dataset,
        root,
        split,
        strategy,
        out,
        settings,
        limit=limit,
        workers=max(1, workers),
        resume=resume,
        on_missing=on_missing,
        cache_dir=None if no_cache else (cache_dir or DEFAULT_CACHE_DIR),
        progress=not quiet,
    )
    typer.echo(summary_markdown(summary))


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders to compare")],
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for report.md and the PNGs (default RUN/report)")
    ] = None,
) -> None:
    """Compare runs: one markdown table, a per-category breakdown, a plot and overlay grids."""
    from avs_agent.evals.report import report

    md, files = report(runs, out)
    typer.echo(md)
    for f in files:
        typer.echo(f"wrote {f}", err=True)


def register(app: typer.Typer) -> None:
    """Add `score`, `eval` and `report` to the main CLI."""
    app.command("score")(score)
    app.command("eval")(eval_cmd)
    app.command("report")(report_cmd)
