"""Hypothesis runs the same examples on every `make test` (CI included), so a red build is
reproducible and never depends on the day's random draw. To hunt for new counterexamples,
run `pytest --hypothesis-profile=explore` (random examples, more of them)."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, derandomize=False)
settings.load_profile("ci")
