"""Whole datasets: resumable batch attribution and evaluation, split over ``torchrun`` ranks.

* :func:`attribute_dataset`: every image through any Captum attribution (RAP, LRP, CLRP,
  SGLRP, CD, Captum's own), maps written in shards (safetensors or npz, float16 optional)
  with a manifest; resumes after an interruption without recomputing finished shards;
  under ``torchrun --nproc_per_node=N`` every rank computes its own shards.
* :class:`AttributionStore`: lazy read access (``len``, ``ids()``, ``store[id] -> (map, record)``).
* :func:`evaluate_dataset`: region perturbation (MoRF / LeRF curves, AOPC) over the stored maps,
  split the same way; :func:`summary_table` compares runs.
* :class:`ImageFiles`: a folder of images (flat, or one sub-folder per class) as a dataset.

Command line: ``python -m captum_rap.datasets attribute-dataset DIR --method rap --model NAME
--out OUT`` and ``... evaluate-dataset OUT``.
"""

from .attribute import DatasetRun, attribute_dataset
from .evaluate import DatasetEvaluation, evaluate_dataset, summary_table
from .images import ImageFiles
from .store import AttributionStore

__all__ = ["attribute_dataset", "DatasetRun", "AttributionStore", "evaluate_dataset", "DatasetEvaluation",
           "summary_table", "ImageFiles"]
