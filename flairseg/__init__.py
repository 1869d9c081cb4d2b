"""flairseg: 2-D FLAIR brain-tumour segmentation (data, phantom, models, losses, metrics, training).

Knows nothing of Ray, Optuna or MLflow; `study` adapts it.
"""

__version__ = "0.1.0"
