"""Face attributes as quasi-identifiers (AnonymousNet): estimated per face, measured per release.

- :mod:`anonymize.attributes.table`: :class:`AttributeTable`, the one shape every source returns;
- :mod:`anonymize.attributes.sources`: the registry of estimation sources (zero-shot, labels,
  probe, landmarks), each behind :class:`AttributeSource`.
"""

from anonymize.attributes.sources import SOURCES, AttributeSource, create_source
from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable

__all__ = ["CELEBA_ATTRIBUTES", "SOURCES", "AttributeSource", "AttributeTable", "create_source"]
