"""Benchmark harnesses for mlxtrio, run from a checkout's root: ``python -m bench.NAME --help``.

- ``serve_bench``: in-process mlx-lm, ``mlx_lm.server`` and mlxtrio side by side
  (decode tokens/s, time to first token, aggregate at each concurrency);
- ``prefix_cache_bench``: time to first token behind a long shared prefix, cached and not;
- ``ipc_bench``: the shared-memory rings between a Trio process and a plain one;
- ``soak``: thousands of requests, hang-ups and worker kills (``--hostile``: the hostile mix);
- ``faults``: each fault injected into a real server, timed;
- ``grammar_bench``: the constrained-decoding libraries on schema bombs, mask cost and coverage.

``bench_models`` (models built here, no downloads), ``sse_client`` (the load's
HTTP client), ``server_process`` (a server as a child process) and
``hostile_mix`` (what ``soak --hostile`` sends) are what they share. Servers
and children run the code of the checkout these files are in. Results go
only where ``--json`` says (``bench/results/`` is ignored by git); the
figures that stand, with their commands, are in docs/PERFORMANCE.md.
"""

from ._common import ROOT, checkout_environment, write_json

__all__ = ["ROOT", "checkout_environment", "write_json"]
