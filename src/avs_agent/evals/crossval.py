"""Fit the decision model's parameters (``agent.decision``) by leave-one-group-out cross-validation.

    python -m avs_agent.evals.crossval --root ../shared/data/davis_av_dev [--samples 1500] [--seeds 3] [--out FILE]

Folds are grouped so that no visual source and no recording sits on both sides: clips that share a
visual (a DAVIS sequence, a photo) or an audio recording (a Freesound id, from ``cases.csv``) fall in
one group, and each fold leaves one group out. The tools run once per clip (their outputs are the
evidence); every parameter draw then runs ``agent.decision`` -- the agent's own decision code, with the
same check and bounded retry -- over those outputs. Each fold's parameters are fitted on the other
groups -- the mean of the draws best there (``--top``: the best 5%; a single best draw is a noisy
pick among hundreds) -- and applied to the held-out group; the table reports those held-out results
(the cross-validated numbers) next to the in-sample result of the same fit on all clips, the current
defaults (in-sample too: they were fitted on these clips, so they are never in the draws) and the
ceiling (each clip's best draw or fit: what the decision could reach with these tools' outputs). The
cross-validated numbers move with the random draws; ``--seeds`` repeats the whole procedure and
reports the spread, which a design must beat another by before it counts. Objective: J over clips
whose source is visible + share of off-screen clips left empty.

Reads ``cases.csv`` only for groups and case types (matched / mixed / offscreen), never as input
to a decision.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avs_agent.agent import decision as D
from avs_agent.agent.settings import DecisionSettings, load_settings

SPACE: dict[str, tuple[float, float]] = {
    "clip_weight": (0.0, 1.0),
    "generic_share": (0.0, 1.0),
    "w_detector": (0.0, 4.0),
    "w_salience": (0.0, 12.0),
    "w_support": (0.0, 4.0),
    "none_bias": (0.0, 0.5),
    "none_offscreen": (0.0, 1.5),
    "second_source_ratio": (0.5, 1.2),
    "instance_share": (0.2, 1.0),
    "detection_floor": (0.1, 0.35),
    "rank_audio_power": (0.2, 1.0),
    "instance_track_weight": (0.0, 1.0),
    "rider_overlap": (0.2, 1.2),
}
"""The fitted parameters and the ranges they are drawn from (w_crop needs the full profile)."""
TOP_SHARE = 0.05
"""A fit is the mean of the best ``TOP_SHARE`` of the draws (by the objective on the fitting clips),
not the single best one: among hundreds of random draws the best on a few dozen clips is partly
luck, and the mean of the good ones sits inside the region that scores well: about the same J on
unseen cases, a spread over seeds several times smaller (CHANGELOG.md has the comparison)."""


@dataclass
class ClipData:
    name: str
    case: str
    group: int
    gt: np.ndarray  # (T, H, W) bool
    perception: D.Perception
    """The clip's tool outputs as the graph perceived them, with every found phrase's tracks."""
    still: bool = False
    """The visual is a photo repeated (nothing moves): propagation must not lose there."""


def visual_key(source: str) -> str:
    """cases.csv's visual_source without its frame list: one DAVIS sequence or one photo."""
    return re.sub(r" frames .*| \(still.*", "", source).strip()


def groups(cases_csv: Path, by: str = "visual+recording") -> dict[str, int]:
    """Clip name -> group id: connected components of 'shares a visual source or a recording'
    (``by="visual"``: a visual source only, for the widened set of evals/augment.py, where every
    recording sits beside several visuals)."""
    rows = list(csv.DictReader(open(cases_csv)))
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, r in enumerate(rows):
        keys = [f"v:{visual_key(r['visual_source'])}"]
        if by != "visual":
            keys += [f"a:{fid}" for fid in re.findall(r"Freesound id (\d+)", r["license_notes"])]
            keys += [
                f"a:{Path(f).name}"
                for f in re.findall(r"(?:US8K|ESC-10):[^/]*/([^ \[]+)", r["audio_sources"])
            ]
        for k in keys:
            if k in owner:
                parent[find(i)] = find(owner[k])
            else:
                owner[k] = i
    roots = {find(i) for i in range(len(rows))}
    ids = {r: n for n, r in enumerate(sorted(roots))}
    return {r["name"]: ids[find(i)] for i, r in enumerate(rows)}


def precompute(root: Path, settings: Any, toolset: Any, group_by: str = "visual+recording") -> list[ClipData]:
    """Run the graph once per clip (rules, ``settings``) and keep its perception: the tool outputs
    every parameter draw is decided over (the instances carry their tracks, linked in verify). As a guard against the cross-validation drifting from the agent, the clip's
    decisions under ``settings`` (``decide_clip``) must give the graph's own masks."""
    from avs_agent.agent.nodes import perception
    from avs_agent.agent.run import run_state
    from avs_agent.evals.datasets import load_dataset

    ds = load_dataset("avsbench-s4", root, "test")
    rows = list(csv.DictReader(open(root / "cases.csv")))
    cases = {r["name"]: r["case_type"] for r in rows}
    stills = {r["name"] for r in rows if "still" in r["visual_source"]}
    grp = groups(root / "cases.csv", group_by)
    out = []
    for s in ds.samples:
        clip = s.inputs.load(aspect=settings.media.aspect, max_side=settings.media.max_side)
        state, ctx = run_state(clip, settings, toolset)
        perc = perception(state, ctx)
        name = s.labels.name
        data = ClipData(name, cases[name], grp[name], s.labels.masks(), perc, name in stills)
        ours = run_decisions(data, settings.agent.decision, toolset, settings)
        if not np.array_equal(ours, np.stack(state["masks"])):
            raise RuntimeError(f"{name}: decide_clip's masks differ from the graph's (the pipelines drifted)")
        out.append(data)
    return out


def run_decisions(c: ClipData, p: DecisionSettings, toolset: Any, settings: Any) -> np.ndarray:
    """(T, H, W) masks the agent's decision code gives for this clip under ``p``."""
    return D.decide_clip(c.perception, p, settings.agent, toolset.matcher).masks(c.perception.shape)


def clip_value(c: ClipData, masks: np.ndarray) -> float:
    """Visible source: J (mean frame IoU, official empty rule); off-screen: 1 if left empty, else 0."""
    if c.case == "offscreen":
        return float(not masks.any())
    from avs_agent.evals.metrics import frame_ious

    return float(frame_ious(masks.astype(np.float32), c.gt).mean())


EXHAUSTIVE = 14
"""Up to this many instances in a frame the instance ceiling tries every subset; above, a greedy pick."""


def best_subset_iou(instances: list[np.ndarray], gt: np.ndarray) -> float:
    """The best frame IoU any subset of ``instances`` ((H, W) bool masks) reaches against ``gt``
    ((H, W) bool), under the official empty rule (an empty truth scores the share of pixels both leave
    empty, so the empty subset scores 1 there)."""
    if not gt.any():
        return 1.0
    if not instances:
        return 0.0
    n = len(instances)
    stack = np.stack([m.reshape(-1) for m in instances])  # (n, P)
    sig = (stack.astype(np.int64) << np.arange(n, dtype=np.int64)[:, None]).sum(axis=0)  # (P,) bitmask
    g = gt.reshape(-1)
    atoms, inv = np.unique(sig, return_inverse=True)
    fg_count = np.bincount(inv, weights=g, minlength=len(atoms))
    all_count = np.bincount(inv, minlength=len(atoms)).astype(np.float64)
    total_gt = float(g.sum())

    def iou(subsets: np.ndarray) -> np.ndarray:  # (S,) int bitmasks -> (S,) IoU
        on = (atoms[None, :] & subsets[:, None]) != 0
        inter = on @ fg_count
        return inter / (on @ all_count + total_gt - inter)

    if n <= EXHAUSTIVE:
        return float(iou(np.arange(1, 1 << n, dtype=np.int64)).max())
    chosen, best = 0, 0.0
    while True:  # greedy forward selection
        trials = np.asarray([chosen | (1 << k) for k in range(n) if not chosen >> k & 1], np.int64)
        if not len(trials):
            return best
        scores = iou(trials)
        if scores.max() <= best:
            return best
        best, chosen = float(scores.max()), int(trials[int(scores.argmax())])


def instance_ceiling(c: ClipData) -> float:
    """What choosing instances could reach on one clip: per frame the best subset of every instance
    the grounder found (any phrase, down to the grounding floor) against the truth, J over the clip;
    an off-screen clip can always be left empty (1)."""
    if c.case == "offscreen":
        return 1.0
    ious = []
    for t, f in enumerate(c.perception.found):
        inst = [m for seg in f.values() for m in seg.mask]
        ious.append(best_subset_iou(inst, c.gt[t].astype(bool)))
    return float(np.mean(ious))


def phrase_ceiling(c: ClipData, p: DecisionSettings) -> float:
    """What choosing phrases could reach on one clip with the agent's own choice of their instances:
    per frame the best of the found phrases, alone or in pairs, each with the instances ``kept``
    selects under ``p``, against the truth, J over the clip (an off-screen clip can always be left
    empty: 1). Between this and ``instance_ceiling`` lies the room in choosing instances; below it, the
    room in choosing what makes the sound."""
    if c.case == "offscreen":
        return 1.0
    from itertools import combinations

    from avs_agent.evals.metrics import frame_ious

    ious = []
    for t, f in enumerate(c.perception.found):
        gt = c.gt[t].astype(bool)
        options = [np.zeros(gt.shape, bool)]
        options += [D.mask_of(f, list(sub), p, gt.shape) for r in (1, 2) for sub in combinations(list(f), r)]
        masks = np.stack(options).astype(np.float32)
        ious.append(float(frame_ious(masks, np.broadcast_to(gt, masks.shape).astype(np.float32)).max()))
    return float(np.mean(ious))


def summarise(data: list[ClipData], values: np.ndarray) -> dict[str, float]:
    def mean(sel):
        v = [float(x) for x, c in zip(values, data, strict=True) if sel(c)]
        return round(float(np.mean(v)), 4) if v else float("nan")

    return {
        "j_visible": mean(lambda c: c.case != "offscreen"),
        "j_matched": mean(lambda c: c.case == "matched"),
        "j_mixed": mean(lambda c: c.case == "mixed"),
        "j_video": mean(lambda c: c.case != "offscreen" and not c.still),
        "j_still": mean(lambda c: c.case != "offscreen" and c.still),
        "offscreen_empty": mean(lambda c: c.case == "offscreen"),
        "n_visible": sum(c.case != "offscreen" for c in data),
        "n_offscreen": sum(c.case == "offscreen" for c in data),
    }


def objective(data: list[ClipData], values: np.ndarray, idx: np.ndarray) -> float:
    vis = [i for i in idx if data[i].case != "offscreen"]
    off = [i for i in idx if data[i].case == "offscreen"]
    return (float(values[vis].mean()) if vis else 0.0) + (float(values[off].mean()) if off else 0.0)


def draws(n: int, seed: int, base: DecisionSettings) -> list[DecisionSettings]:
    """``n`` random draws of the fitted parameters (the others as in ``base``). The current defaults
    are not among them: they were fitted on these very clips, and a pool holding them would let every
    fold pick parameters that saw its held-out clips (a leak that made the cross-validated numbers
    equal the in-sample ones)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        vals = {k: round(float(rng.uniform(lo, hi)), 3) for k, (lo, hi) in SPACE.items()}
        out.append(base.model_copy(update=vals))
    return out


_WORK: tuple = ()
"""What forked workers of ``values_of`` read: (data, candidates, toolset, settings)."""


def _values_of_draw(k: int) -> list[float]:
    data, candidates, toolset, settings = _WORK
    return [clip_value(c, run_decisions(c, candidates[k], toolset, settings)) for c in data]


def values_of(
    data: list[ClipData], candidates: list[DecisionSettings], toolset: Any, settings: Any, jobs: int = 1
) -> np.ndarray:
    """(draws, clips) values: each draw's decisions on each clip (``clip_value``), over ``jobs``
    forked processes (the precomputed outputs are shared by fork, not sent)."""
    global _WORK
    _WORK = (data, candidates, toolset, settings)
    try:
        if jobs <= 1 or len(candidates) < 2 or "fork" not in mp.get_all_start_methods():
            return np.asarray([_values_of_draw(k) for k in range(len(candidates))])
        with mp.get_context("fork").Pool(jobs) as pool:
            return np.asarray(pool.map(_values_of_draw, range(len(candidates)), chunksize=4))
    finally:
        _WORK = ()


def fit(
    data: list[ClipData], values: np.ndarray, candidates: list[DecisionSettings], idx: np.ndarray, top: float
) -> tuple[DecisionSettings, list[int]]:
    """The parameters fitted on clips ``idx``: the mean of the best ``top`` share of the draws by the
    objective there (at least one draw; ``top=0``: the single best draw), and which draws those are."""
    scores = np.asarray([objective(data, values[k], idx) for k in range(len(candidates))])
    order = np.argsort(-scores, kind="stable")[: max(1, round(top * len(candidates)))]
    if len(order) == 1:
        return candidates[int(order[0])], [int(order[0])]
    mean = {k: round(float(np.mean([getattr(candidates[i], k) for i in order])), 3) for k in SPACE}
    return candidates[0].model_copy(update=mean), [int(i) for i in order]


def crossval(
    data: list[ClipData],
    candidates: list[DecisionSettings],
    toolset: Any,
    settings: Any,
    defaults: DecisionSettings | None = None,
    jobs: int = 1,
    top: float = TOP_SHARE,
) -> dict:
    """Leave-one-group-out over the draws ``candidates``: per fold, the parameters fitted on the other
    groups (``fit``) are applied to the held-out group. Also the same fit on all clips (in-sample),
    ``defaults`` (in-sample: they were fitted on these clips) and the ceiling: on each clip the best
    of all draws and fits, what a perfect choice of parameters per clip would reach with these
    tools' outputs."""
    t0 = time.perf_counter()
    values = values_of(data, candidates, toolset, settings, jobs)
    seconds = time.perf_counter() - t0
    all_idx = np.arange(len(data))
    held_out = np.zeros(len(data))
    folds = []
    for g in sorted({c.group for c in data}):
        test = np.asarray([i for i, c in enumerate(data) if c.group == g])
        train = np.setdiff1d(all_idx, test)
        fitted, chosen = fit(data, values, candidates, train, top)
        held_out[test] = values_of([data[i] for i in test], [fitted], toolset, settings)[0]
        folds.append(
            {
                "group": int(g),
                "clips": [data[i].name for i in test],
                "draws": chosen,
                "fitted": {k: getattr(fitted, k) for k in SPACE},
            }
        )
    fitted_all, _ = fit(data, values, candidates, all_idx, top)
    in_sample = values_of(data, [fitted_all], toolset, settings)[0]
    out = {
        "cross_validated": summarise(data, held_out),
        "in_sample": summarise(data, in_sample),
        "ceiling": summarise(data, np.maximum(values.max(axis=0), np.maximum(held_out, in_sample))),
        "instance_ceiling": summarise(data, np.asarray([instance_ceiling(c) for c in data])),
        "phrase_ceiling": summarise(data, np.asarray([phrase_ceiling(c, fitted_all) for c in data])),
        "fitted": {k: getattr(fitted_all, k) for k in SPACE},
        "folds": folds,
        "draws": len(candidates),
        "top_share": top,
        "seconds_deciding": round(seconds, 1),
        "per_clip_cross_validated": {c.name: round(float(v), 4) for c, v in zip(data, held_out, strict=True)},
    }
    if defaults is not None:
        out["defaults"] = summarise(data, values_of(data, [defaults], toolset, settings)[0])
    return out


def spread(runs: list[dict]) -> dict[str, list[float]]:
    """Per number of the cross-validated summary, [mean, min, max] over runs with other seeds: how far
    the estimate moves with the random draws alone (a design must beat another by more than that)."""
    keys = [k for k in runs[0]["cross_validated"] if not k.startswith("n_")]
    return {
        k: [round(float(f(v)), 4) for f in (np.mean, np.min, np.max)]
        for k in keys
        if (v := [r["cross_validated"][k] for r in runs])
    }


COLUMNS = ("j_visible", "j_matched", "j_mixed", "j_video", "j_still")


def table(result: dict) -> str:
    """The markdown table: cross-validated (and its spread over seeds), in-sample, defaults, ceiling."""
    n_off = result["cross_validated"]["n_offscreen"]
    rows = [("cross-validated (leave one group out)", result["cross_validated"])]
    rows += [("in-sample (the same fit on all clips)", result["in_sample"])]
    if "defaults" in result:
        rows += [("defaults (in-sample: fitted on these clips)", result["defaults"])]
    rows += [("ceiling (each clip's best draw or fit)", result["ceiling"])]
    if "phrase_ceiling" in result:
        rows += [
            (
                "phrase ceiling (each frame's best found phrases, their instances chosen as the fit does)",
                result["phrase_ceiling"],
            )
        ]
    if "instance_ceiling" in result:
        rows += [
            (
                "instance ceiling (each frame's best subset of the grounder's instances)",
                result["instance_ceiling"],
            )
        ]
    lines = [
        "| | J visible | J matched | J mixed | J video | J still | off-screen left empty |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        cells = " | ".join(f"{s[k]:.3f}" for k in COLUMNS)
        lines.append(f"| {name} | {cells} | {s['offscreen_empty'] * n_off:.0f}/{n_off} |")
    if len(result.get("seeds", [])) > 1:
        sp = result["spread"]
        cells = " | ".join(f"{sp[k][0]:.3f} ({sp[k][1]:.3f}-{sp[k][2]:.3f})" for k in COLUMNS)
        off = sp["offscreen_empty"]
        lines.insert(
            3,
            f"| cross-validated, {len(result['seeds'])} seeds: mean (min-max) | {cells} | "
            f"{off[0] * n_off:.1f} ({off[1] * n_off:.0f}-{off[2] * n_off:.0f})/{n_off} |",
        )
    return "\n".join(lines)


def _fail(message: str) -> None:
    """A user's error: one line on stderr, exit code 2 (as the CLI does)."""
    import sys

    print(f"crossval: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/davis_av_dev"))
    ap.add_argument("--samples", type=int, default=1500, help="random parameter draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--top",
        type=float,
        default=TOP_SHARE,
        help="a fit is the mean of this share of the draws best on its clips (0: the single best draw)",
    )
    ap.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes deciding the draws (forked)"
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repeat the cross-validation with this many seeds (seed, seed+1, ...) and report the spread",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/crossval.json"))
    ap.add_argument("--set", action="append", default=[], help="settings override key=value")
    ap.add_argument(
        "--perception-cache",
        type=Path,
        default=None,
        help="keep the precomputed perception in this pickle and reuse it when it exists (while working on "
        "the decisions only: delete it when tools, settings or data change)",
    )
    ap.add_argument(
        "--group-by",
        default="visual+recording",
        choices=["visual+recording", "visual"],
        help="what a fold keeps apart: visual sources and recordings (the dev set), or visual sources only (a widened set)",
    )
    ap.add_argument(
        "--designs",
        default="per-frame,propagated,propagated+clip-none",
        help="designs to cross-validate, comma-separated: per-frame (agent.propagate off), propagated (on), each optionally +clip-none (agent.decision.none_per_clip on)",
    )
    args = ap.parse_args(argv)
    from avs_agent.tools.errors import UserError
    from avs_agent.tools.wiring import get_toolset

    if not (args.root / "cases.csv").is_file():
        _fail(f"{args.root / 'cases.csv'} not found (the dev set's case list names the groups)")
    try:
        settings = load_settings(overrides=args.set)
        toolset = get_toolset(settings.tool_config())
        t0 = time.perf_counter()
        if args.perception_cache is not None and args.perception_cache.is_file():
            import pickle

            data = pickle.loads(args.perception_cache.read_bytes())
        else:
            data = precompute(args.root, settings, toolset, args.group_by)
            if args.perception_cache is not None:
                import pickle

                args.perception_cache.parent.mkdir(parents=True, exist_ok=True)
                args.perception_cache.write_bytes(pickle.dumps(data))
    except UserError as exc:
        _fail(str(exc))
    pre = time.perf_counter() - t0
    designs = {}
    for name in [d.strip() for d in args.designs.split(",") if d.strip()]:
        base_name, _, extra = name.partition("+")
        if base_name not in ("per-frame", "propagated") or extra not in ("", "clip-none"):
            _fail(f"unknown design '{name}' (use per-frame or propagated, each optionally +clip-none)")
        decision = settings.agent.decision.model_copy(update={"none_per_clip": extra == "clip-none"})
        agent = settings.agent.model_copy(
            update={"propagate": base_name == "propagated", "decision": decision}
        )
        designed = settings.model_copy(update={"agent": agent})
        runs = [
            crossval(
                data,
                draws(args.samples, seed, agent.decision),
                toolset,
                designed,
                agent.decision if seed == args.seed else None,  # the defaults' row once: it has no seed
                args.jobs,
                args.top,
            )
            for seed in range(args.seed, args.seed + max(args.seeds, 1))
        ]
        designs[name] = {**runs[0], "seeds": [r["cross_validated"] for r in runs], "spread": spread(runs)}
        print(f"## {name}\n{table(designs[name])}\nfitted: {json.dumps(designs[name]['fitted'])}", flush=True)
    default = ("propagated" if settings.agent.propagate else "per-frame") + (
        "+clip-none" if settings.agent.decision.none_per_clip else ""
    )
    result = dict(designs.get(default) or next(iter(designs.values())))
    result.update(
        {
            "design": default if default in designs else next(iter(designs)),
            "designs": {
                k: {
                    kk: v[kk]
                    for kk in (
                        "cross_validated",
                        "in_sample",
                        "defaults",
                        "ceiling",
                        "instance_ceiling",
                        "phrase_ceiling",
                        "seeds",
                        "spread",
                        "fitted",
                        "per_clip_cross_validated",
                    )
                }
                for k, v in designs.items()
            },
            "dataset": str(args.root),
            "groups": len({c.group for c in data}),
            "seconds_tools": round(pre, 1),
            "settings_overrides": args.set,
            "group_by": args.group_by,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    md = "\n\n".join(f"### {k}\n\n{table(v)}" for k, v in designs.items())
    (args.out.with_suffix(".md")).write_text(md + "\n")


if __name__ == "__main__":
    # Run through the imported module, so the perception cache pickles ClipData under its real name
    # (avs_agent.evals.crossval), not __main__, and other scripts can read it.
    from avs_agent.evals.crossval import main as _main

    _main()
