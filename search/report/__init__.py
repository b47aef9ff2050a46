"""Reports and figures: what a study looks like to a person, read from storage only.

`overview.py` is the read model (a study's summary, its trials, its front and history) that the
dashboard, the JSON API and `slimtune report` share; `figures.py` and `plots.py` draw plotly
figures; `rendering.py` fills the Jinja2 templates (templates/, static/); `html_report.py`
writes the study page as one self-contained file. May import the study driver, spaces and
storage; never the web service, export or workers.
"""
