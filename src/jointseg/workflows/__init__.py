"""Workflows: the commands that chain the libraries, above them all and below the CLI.

- ``train``: ``jointseg train``, ``jointseg ablate`` (training, then recognition and the
  postprocessing decision)
- ``cross_validation``: ``jointseg cv``
- ``demo``: ``jointseg demo``
- ``console``: how log lines reach a person (the CLI's logging)

Libraries log (``logging.getLogger(__name__)``) and never print; the CLI configures logging so
that their INFO lines reach the user. Nothing is imported here.
"""
