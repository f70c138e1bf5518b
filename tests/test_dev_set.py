"""Lite `ask` over all 40 real dev clips: a regression floor for the rules + lite tools.

Measured when this was written (2026-11-22): mean frame IoU 0.458 over the 28 clips whose source is
visible (14 with IoU >= 0.5), 12/12 off-screen clips left empty. After the lite grounder's DeepLab
test-time flip and rider masks, and generic audio tags carrying the specific ones ('Vehicle' -> 'Car'):
0.533 (17 clips with IoU >= 0.5), 12/12 off-screen empty. With only a silent clip counted as silent
(a pause does not stop the source): 0.547 (18 clips), 12/12. With one sound read as two objects no
longer taken for two sources, and DeepLab regions split into objects (2026-11-26): 0.5497 (18 clips),
12/12. The decision model of agent/decision.py with its cross-validated fit, the rider reach gone
(2026-12-01): 0.526 in sample (0.513 cross-validated, evals/crossval.py), 12/12. With each accepted
source followed through the clip (ByteTrack, agent.propagate) and the parameters refitted for it
(2026-12-01): 0.551 (published as 0.551 cross-validated, a leak: the defaults were in every fold's
draws; 0.509 without them), 12/12. With 'none' weighed once per clip and the parameters refitted
(2026-12-01): 0.579 (0.543 cross-validated over 3 seeds; 0.557 with propagation off), 12/12. With
each fit the mean of the best 5% of the draws instead of the single best one (the single best was
partly luck: 0.541 with 88% off-screen empty on the widened set's new cases, against 0.527 with 96%)
(2026-12-01): 0.550 (0.537 cross-validated; 0.536 with propagation off), 12/12. With the lite
grounder no longer letting a weak box (below its box_threshold) hide a DeepLab region (2026-12-02,
same parameters): 0.554 (0.554 cross-validated; 0.535 with propagation off), 12/12. On another
machine the next session, with the vocabulary no longer describing the bicycle as 'bicycle bell' and
the sink as 'tap water' (2026-12-02; no dev clip changes with it): 0.551 (0.554 cross-validated), 12/12,
the 0.003 being one knife-edge frame whose truck and car scores swap with the CPU's kernels. With the
visible candidates ranked with the audio weighing less (rank_audio_power 0.578, 2026-12-02): 0.569
(0.558 cross-validated), 12/12. With the instance terms (each instance's salience over the clip, riders
joining what they ride, one name per object) and all thirteen parameters refitted (2026-12-03): 0.573
in the official metric (0.572 cross-validated), 12/12. The floors below leave a small margin.
"""

import csv

import numpy as np
import pytest
from PIL import Image

from avs_agent.agent.run import run_clip
from avs_agent.agent.settings import load_settings
from avs_agent.tools.media import load_clip
from avs_agent.tools.wiring import get_toolset


@pytest.mark.slow
def test_dev_set_floor(dev_set):
    settings = load_settings()
    toolset = get_toolset(settings.tool_config())
    cases = {r["name"]: r["case_type"] for r in csv.DictReader(open(dev_set / "cases.csv"))}
    visible, offscreen_empty, offscreen = [], 0, 0
    for row in csv.DictReader(open(dev_set / "s4_meta_data.csv")):
        name, cat = row["name"], row["category"]
        base = dev_set / "s4_data"
        clip = load_clip(
            base / "visual_frames/test" / cat / name, base / "audio_wav/test" / cat / f"{name}.wav"
        )
        answer = run_clip(clip, settings, toolset)
        if cases[name] == "offscreen":
            offscreen += 1
            offscreen_empty += not answer.visible
            continue
        ious = []
        for i, mask in enumerate(answer.masks):
            gt = np.asarray(Image.open(base / "gt_masks/test" / cat / name / f"{name}_{i + 1}.png")) > 127
            ious.append((gt & mask).sum() / max((gt | mask).sum(), 1))
        visible.append(float(np.mean(ious)))
    assert offscreen == 12 and len(visible) == 28
    assert offscreen_empty >= 12  # 12/12 on 2026-12-01
    assert (
        np.mean(visible) >= 0.55
    )  # 0.569 on 2026-12-02 (0.574 with the clip-by-clip rules, which did not transfer)
