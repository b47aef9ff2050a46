"""`slimtune serve`: the JSON API and the dashboard pages over one storage URL (FastAPI).

`service.py` builds the application and the API routes, `pages.py` the HTML routes, `state.py`
what both take as dependencies, `security.py` who may change what and where the server may
listen, `launches.py` the studies the server starts, `serve.py` the command. The only package
that imports FastAPI: nothing outside it (and the CLI's `serve`) imports it, so a GPU worker
never needs the `serve` extra. May import report, export and the study driver.
"""
