"""Ray Tune + Optuna + ASHA + MLflow around flairseg: `python -m study.run`."""
