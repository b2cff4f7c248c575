"""The worker: arq settings, the generate job, cancellation and stop sequences."""
