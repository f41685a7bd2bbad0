"""The orchestrator's supervision side: the model catalog, one ServedModel per model, the supervisor."""

from ._catalog import DEMO_MODEL_ID, ModelCatalog, ModelEntry
from ._intake import Arrival, Intake, IntakeStatistics
from ._lifecycle import ModelState, ModelStatus
from ._served_model import ServedModel
from ._streams import Events
from ._supervisor import Supervisor

__all__ = [
    "DEMO_MODEL_ID",
    "Arrival",
    "Events",
    "Intake",
    "IntakeStatistics",
    "ModelCatalog",
    "ModelEntry",
    "ModelState",
    "ModelStatus",
    "ServedModel",
    "Supervisor",
]
