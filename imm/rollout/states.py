"""The rollout vocabulary, defined once: states, strategies, operator verbs, step operations.

Everything else (the engine, the schema's one-active-rollout index, the audit's "is a rollout
under way" check, the HTTP API's enums) imports these names instead of spelling the strings.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: immctl starts quicker
if TYPE_CHECKING:
    from typing import Final


# -- states: a rollout is ACTIVE until it reaches a TERMINAL state ------------------------------
RUNNING: Final = "running"
PAUSED: Final = "paused"
ROLLING_BACK: Final = "rolling-back"
COMPLETED: Final = "completed"
ROLLED_BACK: Final = "rolled-back"
FAILED: Final = "failed"
ACTIVE: Final = (RUNNING, PAUSED, ROLLING_BACK)
TERMINAL: Final = (COMPLETED, ROLLED_BACK, FAILED)

# -- strategies -----------------------------------------------------------------------------------
BLUE_GREEN: Final = "blue-green"
ROLLING: Final = "rolling"
CANARY: Final = "canary"
STRATEGIES: Final = (BLUE_GREEN, ROLLING, CANARY)

# -- operator verbs on a rollout (start, undo, status and list are not state changes) -----------
PAUSE: Final = "pause"
RESUME: Final = "resume"
PROMOTE: Final = "promote"
ABORT: Final = "abort"
VERBS: Final = (PAUSE, RESUME, PROMOTE, ABORT)

# -- step operations of a plan (see plan.py) ------------------------------------------------------
OP_LAUNCH: Final = "launch"
OP_ATTACH: Final = "attach"
OP_SHIFT: Final = "shift"
OP_PAUSE: Final = "pause"
OP_BAKE: Final = "bake"
OP_RETIRE: Final = "retire"
OP_APPROVE: Final = "approve"  # manual judgment: wait for k approvals (never skipped by promote)
OP_WAVE: Final = "wave"  # a wave's end: bake, gate its new instances, each-wave analyses
WAITS: Final = (OP_PAUSE, OP_BAKE, OP_WAVE)  # steps that wait, and that promote skips

# -- journal actions --------------------------------------------------------------------------------
BEGIN: Final = "begin"  # a step's decision, recorded before it is acted on
DONE: Final = "done"  # a step carried out
FAIL: Final = "fail"  # a step failed: the rollout rolls back
ANALYSIS: Final = "analysis"  # one analysis run and its measurements (analysis.py)
DOWN: Final = "down"  # a service taken down on purpose (teardown.py): never healed back
OPERATOR_TERMINATE: Final = "operator-terminate"  # an operator terminated an instance: not replaced

# the slot tag of instances relaunched from the previous image during a rollback
ROLLBACK_SLOT: Final = "rollback"


class StepFailed(Exception):
    """A step could not be carried out; the rollout rolls back with this reason."""
