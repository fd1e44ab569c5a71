"""flywheel optimizer: failure mining, candidate generation and the regression gate.

Reads the spans the proxy writes, finds where a prompt version fails, asks a
strong model for a better prompt and proves it on a golden set (SPEC §6).
"""
