"""flywheel canary controller: step rollout, judgment, rollback and alerts (SPEC §7)."""
