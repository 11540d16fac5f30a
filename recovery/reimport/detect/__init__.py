"""One detector per conflict kind. Each module's ``detect(ctx, tp)`` reads the staged rows of one
table against the target, skips what it must (through the context) and returns the typed
:class:`recovery.model.outcome.Conflict` s it found; :mod:`recovery.reimport.merge` runs them in order."""
