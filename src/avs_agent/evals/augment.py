"""Widen the decision model's fit with cases made from the dev set's own material (issue 11): its
visuals paired with its other single-source recordings, in the dev set's S4 layout, with a cases.csv
that ``evals.crossval`` reads.

    python -m avs_agent.evals.augment --root ../shared/data/davis_av_dev --out runs/dev_widened [--per-visual 3]
    python -m avs_agent.evals.crossval --root runs/dev_widened --group-by visual --designs propagated

The folder holds the dev set's own 40 clips and the new ones, as symlinks to the dev files (frames,
masks, recordings) plus all-zero masks for the new off-screen cases: nothing is copied. New cases:

* matched: a visual whose object makes the recording's kind of sound (``SOUNDS``: a dog and a bark,
  a car and an idling engine or a horn, a motorbike and an idling engine, people and children
  playing), with the visual's own human masks;
* offscreen: a recording whose source is surely not in the visual (``absent``: animal, machine and
  nature sounds over visuals of other classes; human sounds only over the cat photos; vehicle sounds
  only over visuals without vehicles or roads), with empty masks;
* mixed: a matched recording with an absent one added 6 dB below it (event RMS, as the dev set's
  mixed clips), with the visual's masks; the only files written besides the empty masks.

Only recordings of the dev set's matched and off-screen clips are used (its mixed clips' audio holds
two sources). The pairing reads the metadata of cases.csv (visual class, audio class), never a tool
output. Each visual gets at most ``--per-visual`` new cases of each kind (seeded draw). Recordings now
sit beside several visuals, so folds can only be grouped by visual source (``--group-by visual``):
the audio of a held-out case may have been heard in training with another picture, which the
original grouping forbids; read the widened numbers with that in mind.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np

from avs_agent.evals.crossval import visual_key

SOUNDS = {
    "dog": {"dog_bark"},
    "car": {"engine_idling", "car_horn"},
    "motorbike": {"engine_idling"},
    "person": {"children_playing"},
}
"""Visual class -> the recorded sounds its object makes (the dev set's classes)."""
HUMAN = {"crying_baby", "sneezing", "children_playing"}
VEHICLE = {"engine_idling", "car_horn", "siren"}
NO_VEHICLES = {"cat", "goat", "dog"}
"""Visual classes whose dev visuals show no vehicle (the dog photos: one has a car, so not those)."""


def absent(visual_class: str, audio_class: str, still: bool) -> bool:
    """Whether a recording's source is surely not in a visual of this class."""
    if audio_class in SOUNDS.get(visual_class, set()):
        return False
    if audio_class in HUMAN:
        return visual_class == "cat" and still  # people may stand in any video or dog photo
    if audio_class in VEHICLE:
        return visual_class in NO_VEHICLES and not (visual_class == "dog" and still)
    if audio_class == "dog_bark":
        return visual_class != "dog"
    return True  # rooster, chainsaw, helicopter, sea waves: no dev visual shows one


DISTRACTOR_DB = -6.0
"""The distractor's level against the target's (event RMS), as in the dev set's mixed clips."""


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        return x, w.getframerate()


def _event_rms(x: np.ndarray, rate: int) -> float:
    """RMS over the 50-ms windows louder than a tenth of the loudest (the sound's events, not its gaps)."""
    n = max(1, rate // 20)
    win = np.sqrt(np.mean(x[: len(x) // n * n].reshape(-1, n) ** 2, axis=1) + 1e-12)
    return float(np.sqrt(np.mean(win[win >= 0.1 * win.max()] ** 2)))


def mix(target: Path, distractor: Path, out: Path, db: float = DISTRACTOR_DB) -> None:
    """target + distractor scaled to ``db`` below it (event RMS), as 16-bit PCM, clipped to [-1, 1]."""
    import wave

    a, rate = _read_wav(target)
    b, rate_b = _read_wav(distractor)
    if rate_b != rate:
        raise ValueError(f"{distractor} is at {rate_b} Hz, {target} at {rate}")
    b = np.resize(b, len(a))  # loop or cut to the target's length
    b *= _event_rms(a, rate) / max(_event_rms(b, rate), 1e-9) * 10 ** (db / 20)
    y = np.clip(a + b, -1, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((y * 32767).astype(np.int16).tobytes())


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def build(root: Path, out: Path, per_visual: int, seed: int) -> list[dict]:
    from PIL import Image

    rows = list(csv.DictReader(open(root / "cases.csv")))
    meta = {r["name"]: r for r in csv.DictReader(open(root / "s4_meta_data.csv"))}
    base = root / "s4_data"

    def files(name: str) -> tuple[list[Path], list[Path], Path]:
        cat = meta[name]["category"]
        frames = [base / "visual_frames/test" / cat / name / f"{name}_{i}.png" for i in range(1, 6)]
        masks = [base / "gt_masks/test" / cat / name / f"{name}_{i}.png" for i in range(1, 6)]
        return frames, masks, base / "audio_wav/test" / cat / f"{name}.wav"

    visuals: dict[str, dict] = {}  # visual key -> a clip showing it (with real masks when it has any)
    for r in rows:
        v = visual_key(r["visual_source"])
        if v not in visuals or (visuals[v]["case_type"] == "offscreen" and r["case_type"] != "offscreen"):
            visuals[v] = r
    recordings = [r for r in rows if r["case_type"] in ("matched", "offscreen")]
    rng = random.Random(seed)
    new: list[dict] = []
    for v, vr in sorted(visuals.items()):
        still = "still" in vr["visual_source"]
        heard = {r["audio_sources"] for r in rows if visual_key(r["visual_source"]) == v}
        others = [r for r in recordings if r["audio_sources"] not in heard]
        matched = [
            r
            for r in others
            if vr["case_type"] != "offscreen" and r["audio_classes"] in SOUNDS.get(vr["visual_class"], set())
        ]
        offscreen = [r for r in others if absent(vr["visual_class"], r["audio_classes"], still)]
        for kind, pool in (("matched", matched), ("offscreen", offscreen)):
            for ar in rng.sample(pool, min(per_visual, len(pool))):
                new.append({"kind": kind, "visual": vr, "audio": ar})
        if matched and offscreen:
            for _ in range(per_visual):
                new.append(
                    {
                        "kind": "mixed",
                        "visual": vr,
                        "audio": rng.choice(matched),
                        "distractor": rng.choice(offscreen),
                    }
                )

    out_rows, out_meta = [], []
    for r in rows:  # the dev set's own clips, as they are
        frames, masks, wav = files(r["name"])
        cat = meta[r["name"]]["category"]
        for i, (f, m) in enumerate(zip(frames, masks, strict=True), 1):
            _link(f, out / "s4_data/visual_frames/test" / cat / r["name"] / f"{r['name']}_{i}.png")
            _link(m, out / "s4_data/gt_masks/test" / cat / r["name"] / f"{r['name']}_{i}.png")
        _link(wav, out / "s4_data/audio_wav/test" / cat / f"{r['name']}.wav")
        out_rows.append(r)
        out_meta.append(meta[r["name"]])
    for n, case in enumerate(new):
        vr, ar = case["visual"], case["audio"]
        name = f"widened_{n:03d}_{vr['name']}__{ar['name']}"
        cat = meta[ar["name"]]["category"]
        frames, masks, _ = files(vr["name"])
        _, _, wav = files(ar["name"])
        for i, (f, m) in enumerate(zip(frames, masks, strict=True), 1):
            _link(f, out / "s4_data/visual_frames/test" / cat / name / f"{name}_{i}.png")
            target = out / "s4_data/gt_masks/test" / cat / name / f"{name}_{i}.png"
            if case["kind"] != "offscreen":
                _link(m, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                size = Image.open(m).size
                Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(target)
        audio_sources, audio_classes = ar["audio_sources"], ar["audio_classes"]
        notes = f"widened from {vr['name']} (visual) and {ar['name']} (audio)"
        if case["kind"] == "mixed":
            dr = case["distractor"]
            mix(wav, files(dr["name"])[2], out / "s4_data/audio_wav/test" / cat / f"{name}.wav")
            audio_sources += f" [target] + {dr['audio_sources']} [distractor {DISTRACTOR_DB:g} dB event-RMS]"
            audio_classes += f"+{dr['audio_classes']}"
            notes += f" + {dr['name']} (distractor)"
        else:
            _link(wav, out / "s4_data/audio_wav/test" / cat / f"{name}.wav")
        out_rows.append(
            {
                **{k: "" for k in rows[0]},
                "name": name,
                "category": cat,
                "case_type": case["kind"],
                "visual_source": vr["visual_source"],
                "visual_class": vr["visual_class"],
                "audio_sources": audio_sources,
                "audio_classes": audio_classes,
                "gt_rule": "empty" if case["kind"] == "offscreen" else "the visual's human masks",
                "license_notes": notes,
            }
        )
        out_meta.append({"name": name, "start": "0", "category": cat, "split": "test"})
    out.mkdir(parents=True, exist_ok=True)
    for path, table in ((out / "cases.csv", out_rows), (out / "s4_meta_data.csv", out_meta)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    return new


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/data/davis_av_dev"))
    ap.add_argument("--out", type=Path, default=Path("runs/dev_widened"))
    ap.add_argument("--per-visual", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    new = build(args.root, args.out, args.per_visual, args.seed)
    kinds = ", ".join(f"{sum(c['kind'] == k for c in new)} {k}" for k in ("matched", "mixed", "offscreen"))
    print(f"{args.out}: the dev set's clips + {len(new)} new ({kinds})")


if __name__ == "__main__":
    main()
