"""The git source: CI fleets' shared reference mirrors and ref-level verification of Bitbucket mirrors.

``config`` (git_mirrors, git_mirrors_dir, ``RefsVerification``), ``command`` (the read-only git runner), ``refs``
(parsing and comparison), ``state`` (``GitState``), ``poller`` (one mirror; ``GitMirrors`` follows the directory),
``collector`` (its families and health), ``verify`` (verify_refs and the CI gate's ``RefsProbe``)."""
