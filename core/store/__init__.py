"""The store: the one home of the run-folder contract (docs/artifacts.md).

Every file name of an artifacts root and its run folders (``files``), what each file must hold (``schema``),
how it is written (whole or not at all) and read (size-bounded, never a pipe, every field checked), live here and
nowhere else: the trainer, the dashboard, the benchmarks and the scripts read and write artifacts through these
functions, and the computations (metrics, calibration, CAMs, focus, faithfulness, populations, sites) are pure
functions of arrays and models. ``tests/test_store.py`` fails when a file name is spelled outside this package.

* ``io``: atomic writes, bounded reads, field checks, ``ArtifactError``, names;
* ``files``: file and folder names and the path functions built on them;
* ``schema``: CSV columns and JSON field checks;
* ``run``: ``Run`` and ``ModelArtifacts`` (reading), the runs of a root, the run shown first;
* ``writers``: ``RunWriter`` and ``ModelWriter``, image paths stored relative to the data root;
* ``explain``: calibration.json, cam_reference.json, faithfulness.json, lung_focus_<split>.*;
* ``site``, ``population``, ``records``: site profiles, population.json, evaluated/shift records and model cards.
"""

from core.store import explain, files, io, population, records, run, schema, site, writers
from core.store.explain import *  # noqa: F403
from core.store.files import *  # noqa: F403
from core.store.io import *  # noqa: F403
from core.store.population import *  # noqa: F403
from core.store.records import *  # noqa: F403
from core.store.run import *  # noqa: F403
from core.store.schema import *  # noqa: F403
from core.store.site import *  # noqa: F403
from core.store.writers import *  # noqa: F403

__all__ = [name for module in (explain, files, io, population, records, run, schema, site, writers)
           for name in module.__all__]
