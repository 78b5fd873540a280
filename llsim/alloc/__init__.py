"""Allocation: which phones take part, their ring order, and the module range of each."""
from llsim.alloc.plan import Plan, StagePlan, explicit_plan, uniform_plan  # noqa: F401
