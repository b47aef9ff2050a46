"""The Optuna side: study files, studies, samplers, the CLI and reports."""
