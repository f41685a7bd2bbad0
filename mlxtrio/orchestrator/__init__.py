"""The orchestrator's supervision side: model catalog, one ModelWorker per model, the supervisor."""

from ._catalog import DEMO_MODEL_ID, ModelCatalog, ModelEntry
from ._intake import Arrival, Intake, IntakeStatistics
from ._supervisor import Supervisor
from ._served_model import Events, ModelWorker, WorkerState, WorkerStatus

__all__ = [
    "DEMO_MODEL_ID",
    "Arrival",
    "Events",
    "Intake",
    "IntakeStatistics",
    "ModelCatalog",
    "ModelEntry",
    "ModelWorker",
    "Supervisor",
    "WorkerState",
    "WorkerStatus",
]
