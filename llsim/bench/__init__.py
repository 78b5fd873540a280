"""Benchmarks (`make bench`): speed, memory and accuracy figures, printed, never asserted in unit tests."""
