"""flywheel: the self-improving prompt sidecar. The console script lives in :mod:`flywheel.cli`."""
