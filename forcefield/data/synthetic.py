"""Synthetic structures labelled by ASE's EMT calculator (for tests, demos and benchmarks).

EMT covers Al, Cu, Ag, Au, Ni, Pd, Pt (+ H, C, N, O, roughly). Slabs follow the OC20
conventions: fully periodic cell with vacuum along z, tags 0 = subsurface, 1 = surface,
2 = adsorbate, the bottom layers fixed with ``FixAtoms``. :func:`emt_is2re` gives
IS2RE-style records (initial structure, relaxed energy) from EMT relaxations.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

METALS = ("Cu", "Pt", "Au", "Ag", "Ni", "Pd", "Al")
ADSORBATES = ("O", "H", "N", "C", "CO", "OH")
KINDS = ("slab", "bulk", "mixed")


def label_with_emt(atoms: Atoms) -> Atoms:
    """Attach EMT energy / forces (raw, constraints ignored) / stress (periodic only)."""
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(),
               "forces": atoms.get_forces(apply_constraint=False)}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress(voigt=False)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def emt_slab(rng: np.random.Generator, size: tuple[int, int, int] = (3, 3, 4),
             metal: str | None = None, adsorbate: str | None = None, vacuum: float = 7.0,
             rattle: float = 0.05) -> Atoms:
    """An OC20-like slab (fcc111 or fcc100) with one adsorbate, tagged, bottom half fixed."""
    metal = metal or str(rng.choice(METALS))
    build = fcc111 if rng.random() < 0.5 else fcc100
    slab = build(metal, size=size, vacuum=vacuum, periodic=True)
    # ase tags layers 1 (top) .. nlayers (bottom); convert to OC20: 1 surface, 0 subsurface
    layer = slab.get_tags()
    nlayers = size[2]
    slab.set_tags(np.where(layer == 1, 1, 0))
    slab.set_constraint(FixAtoms(mask=layer > nlayers // 2))
    ads_name = adsorbate or str(rng.choice(ADSORBATES))
    ads = Atoms(ads_name) if len(ads_name) == 1 else molecule(ads_name)
    if len(ads) > 1 and ads.positions[1:, 2].mean() < ads.positions[0, 2]:
        ads.positions[:, 2] *= -1  # binding atom (index 0) at the bottom
    site = "ontop" if build is fcc100 and rng.random() < 0.5 else (
        "hollow" if build is fcc100 else str(rng.choice(["ontop", "fcc", "hcp", "bridge"])))
    n_slab = len(slab)
    add_adsorbate(slab, ads, height=1.6 + 0.4 * rng.random(), position=site)
    tags = slab.get_tags()
    tags[n_slab:] = 2
    slab.set_tags(tags)
    slab.info.pop("adsorbate_info", None)  # a dict that extxyz cannot store
    slab.rattle(stdev=rattle, seed=int(rng.integers(2**31)))
    slab.pbc = True
    return slab


def emt_bulk(rng: np.random.Generator, repeat: tuple[int, int, int] | None = None,
             metal: str | None = None, alloy: bool = True, rattle: float = 0.08,
             strain: float = 0.02) -> Atoms:
    """A rattled, strained fcc bulk cell, optionally a random binary alloy."""
    metal = metal or str(rng.choice(METALS))
    atoms = bulk(metal, "fcc", cubic=True)
    repeat = repeat or tuple(int(x) for x in rng.integers(1, 3, size=3))
    atoms = atoms.repeat(repeat)
    if alloy and len(atoms) > 1:
        other = str(rng.choice([m for m in METALS if m != metal]))
        mask = rng.random(len(atoms)) < 0.3
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        symbols[mask] = other
        atoms.set_chemical_symbols(list(symbols))
    eps = strain * rng.standard_normal((3, 3))
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.rattle(stdev=rattle, seed=int(rng.integers(2**31)))
    return atoms


def emt_structures(n: int, seed: int = 0, kind: str = "mixed", label: bool = True,
                   **kwargs) -> list[Atoms]:
    """``n`` EMT-labelled structures: "slab" (slab + adsorbate), "bulk", or "mixed" (alternating).

    Extra keyword arguments go to :func:`emt_slab` / :func:`emt_bulk` (e.g. ``size=(4, 4, 5)``
    for ~80-atom slabs, ``repeat=(6, 6, 7)`` for ~1000-atom bulk). Each structure carries
    ``info["sid"] = i``, ``info["fid"] = 0``. Deterministic for a given seed.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(n)):
        k = kind if kind != "mixed" else ("slab" if i % 2 == 0 else "bulk")
        if k == "slab":
            atoms = emt_slab(rng, **{key: v for key, v in kwargs.items()
                                     if key in ("size", "metal", "adsorbate", "vacuum", "rattle")})
        else:
            atoms = emt_bulk(rng, **{key: v for key, v in kwargs.items()
                                     if key in ("repeat", "metal", "alloy", "rattle", "strain")})
        if label:
            label_with_emt(atoms)
        atoms.info["sid"] = i
        atoms.info["fid"] = 0
        out.append(atoms)
    return out


def emt_is2re(n: int, seed: int = 0, fmax: float = 0.05, max_steps: int = 200,
              **kwargs) -> list[Atoms]:
    """``n`` IS2RE-style records: initial slab + adsorbate structures whose label is the
    energy after relaxing them with EMT (the OC20 IS2RE task: relaxed energy from the
    initial structure).

    Each returned ``Atoms`` holds the *initial* positions, a SinglePointCalculator with
    ``energy`` = the relaxed EMT energy and no forces, ``info`` with ``sid``, ``fid`` (0),
    ``y_init`` (initial energy), ``y_relaxed`` and ``relax_steps``, and
    ``arrays["pos_relaxed"]``. The fixed (bottom) atoms stay fixed during the relaxation
    (BFGS to max |F| < ``fmax`` eV/A on free atoms, at most ``max_steps`` steps).
    Extra keyword arguments go to :func:`emt_slab`. Deterministic for a given seed.
    """
    from ase.optimize import BFGS

    rng = np.random.default_rng(seed)
    keys = ("size", "metal", "adsorbate", "vacuum", "rattle")
    out = []
    for i in range(int(n)):
        initial = emt_slab(rng, **{k: v for k, v in kwargs.items() if k in keys})
        relaxed = initial.copy()
        relaxed.calc = EMT()
        y_init = float(relaxed.get_potential_energy())
        opt = BFGS(relaxed, logfile=None)
        opt.run(fmax=fmax, steps=max_steps)
        y_relaxed = float(relaxed.get_potential_energy())
        initial.calc = SinglePointCalculator(initial, energy=y_relaxed)
        initial.info.update(sid=i, fid=0, y_init=y_init, y_relaxed=y_relaxed,
                            relax_steps=int(opt.get_number_of_steps()))
        initial.arrays["pos_relaxed"] = relaxed.positions.copy()
        out.append(initial)
    return out


def oc20_like(n: int, seed: int = 0, vacuum: float = 7.0, kind: str = "mixed",
              size: tuple[int, int, int] | None = None):
    """Yield ``n`` OC20-like structures with *synthetic* labels, fast (no calculator).

    For data-layer tests and benchmarks, where the pipeline matters and not the physics:
    slabs with an adsorbate (3x3 to 4x4 surface cells, 3-6 layers, or ``size``; vacuum
    along z, tags, bottom half fixed) alternating with bulk alloy cells, 20-120 atoms
    (``kind="slab"``: slabs only; ``size=(3, 3, 8)`` gives OC20's typical ~73 atoms).
    Labels: energy = sum of a fixed per-element reference + noise (so least-squares E0s are
    well posed), Gaussian forces, and a symmetric stress for bulk cells; ``info`` has
    ``sid`` and ``fid``.
    Deterministic for a given seed.
    """
    if kind not in ("mixed", "slab"):
        raise ValueError(f"kind must be 'mixed' or 'slab', got {kind!r}")
    rng = np.random.default_rng(seed)
    for i in range(int(n)):
        if i % 2 == 0 or kind == "slab":
            shape = size or (int(rng.integers(3, 5)), int(rng.integers(3, 5)),
                             int(rng.integers(3, 7)))
            atoms = emt_slab(rng, size=shape, vacuum=vacuum)
        else:
            atoms = emt_bulk(rng, repeat=tuple(int(x) for x in rng.integers(2, 4, size=3)))
            if len(atoms) > 120:
                atoms = atoms[:120]
        z = atoms.numbers
        energy = float(np.sum(-2.0 - 0.05 * (z % 11)) + 0.05 * len(z) * rng.standard_normal())
        results = {"energy": energy, "forces": 0.5 * rng.standard_normal((len(z), 3))}
        if "stress" not in results and not (i % 2 == 0 or kind == "slab"):
            s = 0.01 * rng.standard_normal((3, 3))
            results["stress"] = 0.5 * (s + s.T)
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["sid"] = i
        atoms.info["fid"] = int(rng.integers(0, 50))
        yield atoms
