"""Engines beyond ASE that host forcefield models: ``cpp`` (a C++ host of ``.pt2``
packages and its build)."""
