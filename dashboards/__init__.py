"""The Plotly family report read from MLflow (issue 4: not built yet)."""
