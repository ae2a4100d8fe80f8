"""The run record: everything this project writes to MLflow, and the one place that imports it for writing.

``store`` finds and checks the tracking store; ``names`` names every tag, artifact and search filter;
``run`` opens, logs to and ends one run (from the driver or a training worker); ``sweep`` keeps a
sweep's parent run and its trials' child runs.
"""
