"""Checking what clients saw: histories of client calls (`history`), a
per-key linearizability checker (`linearizability`, porcupine's search) and
readable explanations of its verdicts (`explain`). Pure: no I/O, no clock.
The whole-cluster simulation (tests/sim/) records its clients' calls into a
`History` and checks it; `shardkv chaos` will do the same on real processes.
"""
