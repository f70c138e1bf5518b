"""The same dev clips given as an H.264 mp4 (1 fps, AAC) and as frames + wav get the same answer
(benchmarks/bench_reencode.py runs all 40 and writes the mean |dJ| to benchmarks/results/reencode.json,
with the clips still apart by more than 0.1: there the re-encoded audio moves a knife-edge decision)."""

import pytest
from benchmarks.bench_reencode import compare

from avs_agent.agent.settings import load_settings
from avs_agent.tools.wiring import get_toolset

CLIPS = [
    "davis_scooter_black_engine_02",  # several scooters, the moving one with its rider
    "pets_great_pyrenees_177_bark_01",  # a dog, a person and a car in view, a bark in a mix
    "pets_maine_coon_204_bark_01",  # a bark over a cat: off screen
]


@pytest.mark.slow
def test_mp4_and_frames_give_the_same_answer(dev_set, tmp_path):
    settings = load_settings()
    rows = compare(dev_set, settings, get_toolset(settings.tool_config()), CLIPS, tmp_path)
    assert {r["name"] for r in rows} == set(CLIPS)
    for r in rows:
        assert r["mp4"]["labels"] == r["frames"]["labels"], r
        assert r["delta"] <= 0.05, r  # compression noise moves a mask's edge, not the object chosen
