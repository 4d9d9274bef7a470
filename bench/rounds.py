"""Contestants measured trial by trial in rounds: every round runs each contestant once, in a
fresh random order, after the same idle (IDLE plus a random phase drawn once per round), so drift
in the machine's load and every idle length hit all of them alike."""

from __future__ import annotations

import random

from bench.peers import Skip
from bench.session import Session
from bench.stats import Cell, Table, p50_p99
from bench.waiting import IDLE, Arm, Peer, time_one

TRIALS, QUICK_TRIALS = 100, 3


def interleaved(key: str, title: str, peers: list[Peer], run: Session, phase: float) -> Table:
    """p50/p99 (ms) of every peer; *phase*: the longest polling period among them (seconds)."""
    arms: dict[str, Arm] = {}
    skipped: dict[str, str] = {}
    for peer in peers:
        try:
            arms[peer.name] = peer.make(run)
        except Skip as skip:
            skipped[peer.name] = str(skip)
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(QUICK_TRIALS if run.quick else TRIALS):
        idle = IDLE + random.uniform(0, phase)
        order = list(arms)
        random.shuffle(order)
        for name in order:
            samples[name].append(time_one(arms[name], idle) / 1e6)
    rows: dict[str, list[Cell] | str] = {
        p.name: skipped[p.name] if p.name in skipped else p50_p99(samples[p.name]) for p in peers
    }
    return Table(key, title, ["peer", "p50 (ms)", "p99 (ms)"], rows)
