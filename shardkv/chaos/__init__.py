"""`shardkv chaos`: faults injected into a real cluster while recording
clients run, then a check of what they saw (see `cli` for the whole
story, `faults` for the nemesis, `netns` for partitions)."""

from __future__ import annotations

from shardkv.chaos.cli import add_parser, run
from shardkv.chaos.model import FAULTS
from shardkv.chaos.replicas import ReplicaState, read_replicas, replica_mismatches

__all__ = ["FAULTS", "ReplicaState", "add_parser", "read_replicas", "replica_mismatches", "run"]
