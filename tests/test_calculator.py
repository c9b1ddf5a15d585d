"""ForceFieldCalculator: numerical derivatives, symmetry, extensivity, dtype, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.io import read
from helpers import tiny_model
from scipy.spatial.transform import Rotation

from forcefield.calculator import CalculatorError, ForceFieldCalculator
from forcefield.export import save_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("calc") / "model.pt"
    save_model(path, tiny_model())
    return path


@pytest.fixture(scope="module")
def calc(model_path):
    return ForceFieldCalculator(model_path, dtype="float64")


@pytest.fixture(scope="module")
def molecule(repo_data):
    return read(repo_data / "3bpa" / "train_300K.xyz", 0)


def organic_cell(seed: int = 0, n: int = 24, length: float = 6.5) -> Atoms:
    """A small dense periodic C/H/N/O cell (not chemistry, but smooth for the model)."""
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 6, 7, 8], size=n)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pos = (grid[:n] + 0.5) * (length / 3) + rng.normal(0, 0.25, (n, 3))
    cell = np.diag([length, length * 1.05, length * 0.95]) + rng.normal(0, 0.2, (3, 3))
    return Atoms(numbers=numbers, positions=pos, cell=cell, pbc=True)


def test_implemented_properties_is_a_class_attribute(calc):
    assert "implemented_properties" in ForceFieldCalculator.__dict__
    assert ForceFieldCalculator.implemented_properties == [
        "energy", "free_energy", "energies", "forces", "stress"]
    assert Calculator.implemented_properties == []  # the base list is untouched
    assert isinstance(calc, Calculator)


def test_molecule_results(calc, molecule):
    atoms = molecule.copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(energy, abs=1e-8)
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and forces.dtype == np.float64
    assert np.abs(forces.sum(axis=0)).max() < 1e-10  # no net force on a free molecule
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()  # no cell


def test_forces_equal_numerical_forces(calc, molecule):
    atoms = molecule.copy()
    atoms.calc = calc
    numerical = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numerical, atol=1e-6, rtol=0)


def test_periodic_forces_and_stress_equal_numerical(calc):
    atoms = organic_cell()
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4),
                               atol=1e-6, rtol=0)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-4  # a real test, not zeros
    np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5),
                               atol=1e-7, rtol=0)
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T, atol=1e-12)


def test_mixed_pbc(calc):
    atoms = organic_cell(1)
    atoms.pbc = [True, True, False]
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4),
                               atol=1e-6, rtol=0)
    # a slab with a cell: stress = (1/V) dE/dstrain still holds
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5),
                               atol=1e-7, rtol=0)
    # without a cell vector along the non-periodic direction
    slab = atoms.copy()
    slab.cell[2] = 0.0
    slab.calc = calc
    np.testing.assert_allclose(slab.get_forces(), atoms.get_forces(), atol=1e-10)
    assert slab.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_molecule_in_a_box_matches_no_cell(calc, molecule):
    free = molecule.copy()
    free.calc = calc
    boxed = molecule.copy()
    boxed.center(vacuum=5.0)
    boxed.pbc = True
    boxed.calc = calc
    assert boxed.get_potential_energy() == pytest.approx(free.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(boxed.get_forces(), free.get_forces(), atol=1e-10)


def test_rotation_and_translation_invariance(calc, molecule):
    atoms = molecule.copy()
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    rot = Rotation.random(random_state=3).as_matrix()
    moved = molecule.copy()
    moved.positions = molecule.positions @ rot.T + np.array([3.0, -7.5, 11.0])
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(moved.get_forces(), forces @ rot.T, atol=1e-9)

    cell = organic_cell(2)
    cell.calc = calc
    e0, s0 = cell.get_potential_energy(), cell.get_stress(voigt=False)
    turned = cell.copy()
    turned.set_cell(cell.cell.array @ rot.T, scale_atoms=False)
    turned.positions = cell.positions @ rot.T + np.array([1.0, 2.0, -3.0])
    turned.calc = calc
    assert turned.get_potential_energy() == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(turned.get_stress(voigt=False), rot @ s0 @ rot.T, atol=1e-10)


def test_supercell_is_extensive(calc):
    atoms = organic_cell(3)
    atoms.calc = calc
    energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                              atoms.get_stress())
    big = atoms.repeat((2, 2, 2))
    big.calc = calc
    assert big.get_potential_energy() == pytest.approx(8 * energy, abs=1e-8)
    np.testing.assert_allclose(big.get_forces(), np.tile(forces, (8, 1)), atol=1e-9)
    np.testing.assert_allclose(big.get_stress(), stress, atol=1e-10)


def test_dtype_choice_never_touches_default_dtype(model_path, molecule):
    default = torch.get_default_dtype()
    c32 = ForceFieldCalculator(model_path, dtype="float32")
    c64 = ForceFieldCalculator(model_path, dtype=torch.float64)
    cnone = ForceFieldCalculator(model_path)
    assert c32.dtype == torch.float32 and c64.dtype == torch.float64
    assert cnone.dtype == torch.float64  # the model's own (saved in float64)
    results = []
    for c in (c32, c64, c32):  # interleaved use
        atoms = molecule.copy()
        atoms.calc = c
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    assert torch.get_default_dtype() == default
    assert abs(results[0][0] - results[1][0]) < 1e-2
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-3)
    assert results[0][0] == results[2][0]
    with pytest.raises(ValueError, match="dtype"):
        ForceFieldCalculator(model_path, dtype="half")


def test_in_memory_model_equals_model_file(model_path, molecule):
    a = molecule.copy()
    a.calc = ForceFieldCalculator(tiny_model())
    b = molecule.copy()
    b.calc = ForceFieldCalculator(model_path)
    assert a.get_potential_energy() == b.get_potential_energy()
    assert np.array_equal(a.get_forces(), b.get_forces())


def test_works_under_no_grad(calc, molecule):
    atoms = molecule.copy()
    atoms.calc = calc
    with torch.no_grad():
        forces = atoms.get_forces()
    assert np.abs(forces).max() > 0


def test_recomputes_when_atoms_move(calc, molecule):
    atoms = molecule.copy()
    atoms.calc = calc
    e1 = atoms.get_potential_energy()
    atoms.positions[0] += 0.05
    assert atoms.get_potential_energy() != e1
    atoms.numbers[0], atoms.numbers[1] = atoms.numbers[1], atoms.numbers[0]
    e3 = atoms.get_potential_energy()
    fresh = atoms.copy()
    fresh.calc = ForceFieldCalculator(calc.model)
    assert fresh.get_potential_energy() == pytest.approx(e3, abs=1e-10)


def test_change_check_agrees_with_ase(calc):
    """The exact check reports every change ASE's check reports, and also a one-ulp move
    (below ASE's 1e-15 tolerance), after which the energy is recomputed."""
    from ase.calculators.calculator import compare_atoms

    atoms = organic_cell()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.check_state(atoms) == [] == compare_atoms(calc.atoms, atoms)
    edits = {
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-9),
        "numbers": lambda a: a.numbers.__setitem__(0, 1 if a.numbers[0] != 1 else 6),
        "cell": lambda a: a.set_cell(a.cell.array * 1.001, scale_atoms=False),
        "pbc": lambda a: a.set_pbc([True, True, False]),
        "initial_charges": lambda a: a.set_initial_charges(np.arange(len(a), dtype=float)),
        "initial_magmoms": lambda a: a.set_initial_magnetic_moments(np.ones(len(a))),
    }
    for name, edit in edits.items():
        changed = atoms.copy()
        edit(changed)
        assert calc.check_state(changed) == compare_atoms(calc.atoms, changed) == [name]
    tiny = atoms.copy()
    tiny.positions[3, 1] = np.nextafter(tiny.positions[3, 1], np.inf)
    assert calc.check_state(tiny) == ["positions"]
    atoms.positions[3, 1] = tiny.positions[3, 1]
    atoms.get_potential_energy()  # recomputed: the calculator now holds the moved atoms
    assert calc.atoms.positions[3, 1] == tiny.positions[3, 1]


def test_committee_mean_and_std(tmp_path, molecule):
    paths = []
    for seed in (0, 1, 2):
        paths.append(tmp_path / f"m{seed}.pt")
        save_model(paths[-1], tiny_model(seed))
    committee = ForceFieldCalculator(paths)
    singles = [ForceFieldCalculator(p) for p in paths]
    atoms = molecule.copy()
    atoms.calc = committee
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    members_e, members_f = [], []
    for single in singles:
        a = molecule.copy()
        a.calc = single
        members_e.append(a.get_potential_energy())
        members_f.append(a.get_forces())
    assert energy == pytest.approx(np.mean(members_e), abs=1e-9)
    np.testing.assert_allclose(forces, np.mean(members_f, axis=0), atol=1e-12)
    assert committee.results["energy_std"] == pytest.approx(np.std(members_e), abs=1e-9)
    np.testing.assert_allclose(committee.results["forces_std"], np.std(members_f, axis=0),
                               atol=1e-12)
    np.testing.assert_allclose(committee.results["energy_committee"], members_e, atol=1e-9)


# ---------------------------------------------------------------------------- errors
def test_unknown_element_lists_known_ones(calc, molecule):
    atoms = molecule.copy()
    atoms.numbers[3] = 26
    atoms.calc = calc
    with pytest.raises(CalculatorError, match=r"not trained on Fe \(Z=26\).*H \(Z=1\), C \(Z=6\), "
                                              r"N \(Z=7\), O \(Z=8\)"):
        atoms.get_potential_energy()


def test_empty_atoms(calc):
    atoms = Atoms()
    atoms.calc = calc
    with pytest.raises(CalculatorError, match="empty"):
        atoms.get_potential_energy()


def test_pbc_with_zero_cell(calc, molecule):
    atoms = molecule.copy()
    atoms.cell = np.zeros((3, 3))
    atoms.pbc = True
    atoms.calc = calc
    with pytest.raises(CalculatorError, match="periodic along a, b, c .*cell vector there is zero"):
        atoms.get_forces()
    flat = organic_cell(4)
    flat.set_cell([[6.0, 0, 0], [0, 6.0, 0], [3.0, 3.0, 0.0]], scale_atoms=False)
    flat.calc = calc
    with pytest.raises(CalculatorError, match="zero volume"):
        flat.get_potential_energy()
    slab = organic_cell(4)
    slab.cell[0] = 0.0
    slab.pbc = [True, True, False]
    slab.calc = calc
    with pytest.raises(CalculatorError, match="periodic along a "):
        slab.get_potential_energy()


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ForceFieldCalculator(tmp_path / "missing.pt")


def test_top_level_names(model_path):
    import forcefield

    assert forcefield.ForceFieldCalculator is ForceFieldCalculator
    model = forcefield.load_model(model_path)
    assert model.config["species"] == [1, 6, 7, 8]


def test_stress_only_when_asked(model_path):
    atoms = organic_cell(5)
    lazy = ForceFieldCalculator(model_path, compute_stress=False)
    atoms.calc = lazy
    atoms.get_forces()
    assert "stress" not in lazy.results
    stress = atoms.get_stress()  # computed on demand
    eager = ForceFieldCalculator(model_path)
    other = atoms.copy()
    other.calc = eager
    other.get_forces()
    assert "stress" in eager.results  # fully periodic: computed with the forces
    np.testing.assert_allclose(other.get_stress(), stress, atol=1e-12)
