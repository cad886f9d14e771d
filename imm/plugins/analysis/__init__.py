"""Analysis kinds: what measures a rollout (``prometheus``, ``http``, ``compare`` built in).

A kind is registered through ``imm_register_analysis_kinds`` exactly like a third-party
plugin's; the rollout package runs the measurements and judges them (``imm/rollout/analysis.py``).
"""

from ..analysis_base import (
    ROLES,
    TEMPLATE_VARS,
    AnalysisKind,
    AnalysisRegistry,
    AnalysisTarget,
    Condition,
    Measured,
    MeasureError,
)

__all__ = ["ROLES", "TEMPLATE_VARS", "AnalysisKind", "AnalysisRegistry", "AnalysisTarget",
           "Condition", "Measured", "MeasureError"]
