"""Costs that the allocator and the simulator must agree on (:mod:`.steps`)."""
