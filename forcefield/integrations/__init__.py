"""Engines beyond ASE that host forcefield models: ``cpp`` (a C++ host of ``.pt2``
packages and its build), ``lammps`` (the LAMMPS plugin ``pair_style forcefield`` and its
build; docs/lammps.md), ``torch_sim`` (a TorchSim ``ModelInterface``; docs/torchsim.md) and
``ipi`` (an i-PI socket client; docs/ipi.md)."""
