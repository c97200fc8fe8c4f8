"""``chexgen benchmark``: any text-to-CXR generators against each other, on one real test set, one report.

- ``config``: ``bench.yaml`` (real manifest, models, extractors, re-identification, sampling).
- ``models``: each model checked before anything runs, loaded in turn, generated into ``out/models``
  (resumable, sharded) and metered (wall time, denoiser samples per image).
- ``sets``: every image set read once, described by every extractor (features cached).
- ``scoring``: per-model metrics with bootstrap CIs, paired Wilcoxon tests, per-finding rows.
- ``report``: ``leaderboard.md`` / ``.csv``, ``metrics.json``, ``report.html``.
- ``run``: :func:`run_benchmark`, the whole run.
"""

from chexgen.benchmark.config import BenchmarkConfig, ExtractorEntry, ModelEntry, ReIDEntry, load_config
from chexgen.benchmark.run import BenchmarkResult, run_benchmark

__all__ = ["BenchmarkConfig", "ModelEntry", "ExtractorEntry", "ReIDEntry", "load_config", "BenchmarkResult",
           "run_benchmark"]
