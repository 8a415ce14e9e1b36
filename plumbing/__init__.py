"""plumbing: process plumbing shared by the PD, the stores and the command line.

* `config_file`: typed settings from a TOML file and `--flags`.
* `units`: durations and sizes as text ("500ms", "96MiB") and back.
* `dirlock`: one process per data directory.
* `cli`: `--log-level`, logging to stderr, stopping on SIGINT / SIGTERM,
  one-line error reports.
* `nursery`: a nursery for a block's background tasks whose own error
  leaves the block as itself, not wrapped in an ExceptionGroup.
* `failpoints`: named faults a test or a chaos tool injects into a running
  process (from SHARDKV_FAILPOINTS, or at run time).
* `asgi`: the ASGI types and lifespan answers of the PD's and the stores'
  HTTP apps; `metrics`: what their Prometheus metrics share.

Only the standard library and trio: no lmdb, no hypercorn, nothing of the
other packages, so that a client-only install can use it.
"""
