"""The values the pipeline's stages hand each other: the vocabulary (:mod:`.kinds`), typed
counts, lost values, file results and verifications (:mod:`.values`), and the run's
:class:`~recovery.model.outcome.Outcome` with its one verdict and exit code (:mod:`.outcome`).
Values only: this package imports nothing of ``recovery`` but itself."""
