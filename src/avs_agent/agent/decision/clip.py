"""A clip's decision as a pure function of its perception: what the graph's nodes call step by step, and what the cross-validation runs for every parameter draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from avs_agent.agent.decision.evidence import evidence_table
from avs_agent.agent.decision.instances import kept
from avs_agent.agent.decision.policy import check_frame, first_choice, next_choice
from avs_agent.agent.decision.temporal import join_riders, one_name, pivot_frame, through_time, track_link
from avs_agent.agent.settings import AgentSettings, DecisionSettings
from avs_agent.tools.protocols import TextMatcher
from avs_agent.tools.types import Segments

if TYPE_CHECKING:
    from avs_agent.agent.decision.evidence import FrameEvidence, Perception
    from avs_agent.agent.decision.policy import CropFn
    from avs_agent.agent.decision.temporal import LinkFn


class Settled(NamedTuple):
    """A clip's settled objects (``settle``)."""

    objects: list[dict[str, Segments]]
    """Per frame, the answered phrases and their instances."""
    held: list[list[str]]
    """Per frame, the phrases held from the followed source (frames that accepted nothing)."""
    pivots: dict[str, int]
    """Each followed phrase's pivot frame."""
    own_pick: list[dict[str, str]]
    """Per frame, the followed phrases answered by the frame's own pick, and why ("lost": no instance on
    the source's track there; "elsewhere": the track's instance is not among the frame's own)."""


def settle(
    table: list[FrameEvidence],
    accepted: list[list[str]],
    found: list[dict[str, Segments]],
    p: DecisionSettings,
    config: AgentSettings,
    link: LinkFn | None = None,
) -> Settled:
    """Each frame's answered objects once its checked sources are settled: followed through time
    from each one's pivot frame when ``link`` is given (``through_time``), else the frame's own kept
    instances; a rider joins what it rides (``join_riders``); then one name per object (``one_name``)."""
    pivots: dict[str, int] = {}
    own_pick: list[dict[str, str]] = [{} for _ in accepted]
    if link is None:
        objects = [kept(f, a, p) for f, a in zip(found, accepted, strict=True)]
        held: list[list[str]] = [[] for _ in accepted]
    else:
        linked = {}
        for ph in dict.fromkeys(x for a in accepted for x in a):
            pivot = pivot_frame(table, accepted, ph)
            if pivot is not None and (seq := link(ph, pivot)) is not None:
                pivots[ph] = pivot
                linked[ph] = seq
        objects, held, own_pick = through_time(accepted, found, linked, p, config)
    return Settled(one_name(join_riders(objects, found, p), table, config), held, pivots, own_pick)


@dataclass
class ClipDecision:
    """The rules' decisions over one clip (``decide_clip``)."""

    table: list[FrameEvidence]
    accepted: list[list[str]]
    """Per frame, the phrases whose masks passed the check (before following through time)."""
    objects: list[dict[str, Segments]]
    """Per frame, the answered phrases and their instances."""
    held: list[list[str]]

    def masks(self, shape: tuple[int, int]) -> np.ndarray:
        """(T, H, W) bool: the union of each frame's answered instances."""
        out = np.zeros((len(self.objects), *shape), bool)
        for t, objs in enumerate(self.objects):
            for seg in objs.values():
                out[t] |= seg.union()
        return out


def decide_clip(
    perc: Perception,
    p: DecisionSettings,
    config: AgentSettings,
    matcher: TextMatcher,
    crop: Callable[[int], CropFn | None] | None = None,
    link: LinkFn | None = None,
) -> ClipDecision:
    """The rules' decisions over a clip's perception, step by step as the graph takes them (verify:
    the table and the first choice; check; retry: the next choice, up to ``config.max_attempts``;
    propagate: ``settle``), with the same step functions the nodes call. ``crop(t)`` gives frame t's
    crop check (full profile); ``link`` follows a source through time (default: the perception's
    tracks, when ``config.propagate`` and the clip has several frames)."""
    table = evidence_table(perc, p, config, matcher)
    accepted: list[list[str]] = []
    for t in range(len(table)):
        phrases, tried, attempt, passed = first_choice(table[t], p), [], 0, []
        while phrases:
            checked = check_frame(
                table[t], perc.found[t], phrases, p, config, perc.shape, crop(t) if crop else None
            )
            table[t] = checked.row
            if checked.passed:
                passed = checked.passed
                break
            tried = [*tried, *phrases]
            nxt = [ph for ph in next_choice(table[t], p, tried) if ph not in tried]
            if not nxt or attempt + 1 >= config.max_attempts:
                break
            phrases, attempt = nxt, attempt + 1
        accepted.append(passed)
    following = config.propagate and len(table) > 1 and any(accepted)
    if following and link is None and perc.linked:
        link = track_link(perc.found, p)
    settled = settle(table, accepted, perc.found, p, config, link if following else None)
    return ClipDecision(table, accepted, settled.objects, settled.held)
