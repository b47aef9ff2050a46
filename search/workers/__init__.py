"""Many workers on one study: `slimtune launch` (N local worker processes, one GPU each) and
how a worker joins a study it did not create (`joining.py`: the configuration from storage).

What each driver does to share a study with others (slots, heartbeats, retries of lost trials)
is part of the driver itself (`search/many_workers.py`), since `slimtune run` is a worker too.
May import the study driver and storage.
"""
