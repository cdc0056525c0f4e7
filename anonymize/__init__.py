"""anonymize: batch face-dataset anonymization with attribute-preserving methods."""

import time as _time

__version__ = "0.1.0"
IMPORTED_AT = _time.perf_counter()  # when the package was first imported: a run reports its start-up from here
