"""Face attributes as quasi-identifiers (AnonymousNet): estimated per face, measured per release.

- :mod:`anonymize.attributes.table`: :class:`AttributeTable`, the one shape every source returns;
- :mod:`anonymize.attributes.sources`: the registry of estimation sources (zero-shot, labels,
  probe, landmarks), each behind :class:`AttributeSource`;
- :mod:`anonymize.attributes.privacy`: k / l / t of a table (stage II's metrics);
- :mod:`anonymize.attributes.ppas`: stage II's selection (Algorithm 1, the dataset k-member mode,
  randomised response); :mod:`anonymize.attributes.measure`: both on named columns of a table.
"""

from anonymize.attributes.sources import SOURCES, AttributeSource, create_source
from anonymize.attributes.table import CELEBA_ATTRIBUTES, AttributeTable

__all__ = ["CELEBA_ATTRIBUTES", "SOURCES", "AttributeSource", "AttributeTable", "create_source"]
