"""Export: the configuration a user picks, as a deployable model verified in a fresh process.

`build.py` rebuilds a trial in the worker process, writes the files and the manifest, and
verifies them; `selection.py` turns `--pick RULE` and `--knee` into a trial number.
May import the study driver (`slimtune.search.*` modules), objectives, spaces and storage;
nothing in the driver imports this package.

`slimtune.search.export(...)` and `slimtune.search.export.export(...)` are the same call: this
package can be called.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from slimtune.objectives.artifacts import formats_for
from slimtune.search.export.build import ACCURACY_TOLERANCE, ExportError, ExportFailed, ExportResult, export


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> ExportResult:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ACCURACY_TOLERANCE", "ExportError", "ExportFailed", "ExportResult", "export", "formats_for"]
