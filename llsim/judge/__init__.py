"""Plans judged by simulation, above both the allocator (:mod:`llsim.alloc`) and the simulator
(:mod:`llsim.sim`): the finer evaluation of candidate plans (:mod:`.evaluate`), the comparison of
strategies (:mod:`.compare`, ``llsim allocate``) and ``llsim run`` itself (:mod:`.run`: scenario ->
plan -> simulation -> run directory)."""
