"""Engines beyond ASE that host forcefield models: ``cpp`` (a C++ host of ``.pt2``
packages and its build) and ``lammps`` (the LAMMPS plugin ``pair_style forcefield`` and
its build; docs/lammps.md)."""
