"""``flywheel demo``: the whole loop on loopback against a simulated provider."""
