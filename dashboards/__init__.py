"""The study report: `python -m dashboards.report` reads MLflow and writes one offline HTML page.

Modules in the order they run: load (MLflow through study.schema), figures, answer and
pictures (Plotly figures from loaded data; spread draws a cross-validated study's fold
spread, answer the confirmed finalists compared), page (the HTML), report (the command
line). No torch.
"""
