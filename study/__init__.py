"""Ray Tune + Optuna + ASHA + MLflow around flairseg (issue 3: not built yet)."""
