"""Published checkpoints -> our modules' state dicts, one module per network family.

As NVlabs' stylegan2-ada-pytorch keeps ``legacy.py`` apart from ``networks.py``: the network modules
of :mod:`anonymize.models` define the ``nn.Module`` s and their tensor shapes; the modules here know
the published files (their key names, layouts and value conventions), check them, and convert them.
Every reader goes through :func:`anonymize.models.checkpoint.load_checkpoint` (no pickled code runs)
and fails with one line naming the file. :mod:`anonymize.models.registry` names which converter reads
which artefact.
"""
