"""The target screen: before the first trial, measure what the deployment knobs do on this
target, and search only the settings that pay.

- `settings`: what a deployment setting and a pruning shape are, and how settings compare;
- `target`: the screen itself (`Screen`): what it measures, in which order, and its verdicts;
- `study`: the screen as the study driver runs it (budget, once per study, the narrowed space);
- `tables`: the screen in words, for `slimtune run` and `slimtune screen STUDY`.

The worker-side half, building and timing one setting, is objectives/screen.py; where the
search starts from the screen's winners is search/first_trials.py.
"""

from .study import for_study, narrow
from .tables import summary, table
from .target import Screen

__all__ = ["Screen", "for_study", "narrow", "summary", "table"]
