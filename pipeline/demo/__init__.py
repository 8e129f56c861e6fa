"""The demo and its sample data: what ``make demo`` (``pipeline demo``) runs end to end.

* :mod:`~pipeline.demo.sample_data` -- scikit-learn's bundled digits as an image folder, and a
  tiny text corpus (no download).
* :mod:`~pipeline.demo.run` -- digits -> Spark conversion -> TorchDistributor training ->
  held-out accuracy (:func:`~pipeline.demo.run.run_demo`).
"""
