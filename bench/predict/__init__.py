"""Using trained models on new images: a folder of cells classified by a checkpoint or an
ensemble (:mod:`.folder`), the checkpoints read back (:mod:`.checkpoints`), the images decoded
as in training (:mod:`.images`), the tables written (:mod:`.tables`), and a run or ensemble
evaluated on another lab's labelled folder (:mod:`.external`).
"""

from bench.predict.checkpoints import LoadedCheckpoint, PredictError, load_checkpoint
from bench.predict.external import evaluate_external
from bench.predict.folder import METHODS, prediction_device, run

__all__ = ["run", "METHODS", "prediction_device", "PredictError", "LoadedCheckpoint", "load_checkpoint",
           "evaluate_external"]
