"""The exported package (``forcefield export format=pt2``) and the compiled model.

Two tiny trained models know 3BPA's elements and those of the OC20 slab: a GauntMACE and a
GauntEquiformerV2 (Selfmix, gradient forces).  Each is packaged once per session in float64
and float32 (AOTInductor builds take a minute or two each).  Eager, compiled
(``compile=True``), packaged (Python) and packaged (C++) give the same energy, forces and
stress on a 3BPA molecule, the 972-atom periodic box and an OC20 slab; a direct-force
GauntEquiformerV2 with a neighbour cap compiles too; the package loads without
forcefield's model code; damaged or foreign files and unknown elements are one sentence
each.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from helpers import SLAB_SPECIES, packed_box, rewrite_pt2_metadata, trained_tiny_model

from forcefield import ForceFieldCalculator, ops
from forcefield.model_files import ModelFileError
from forcefield.pt2 import read_pt2_metadata

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not ops.available(), reason="operator library not built")]

@pytest.fixture(scope="session")
def trained(slab_model) -> torch.nn.Module:
    return slab_model


@pytest.fixture(scope="session")
def trained_eqv2() -> torch.nn.Module:
    """The tiny GauntEquiformerV2 (Selfmix, gradient forces) with SLAB_SPECIES, trained."""
    return trained_tiny_model(SLAB_SPECIES, steps=20, architecture="gaunt_equiformer_v2")


@pytest.fixture(scope="session")
def packages(trained, trained_eqv2, request, tmp_path_factory) -> dict[str, Path]:
    """GauntMACE in float64 from the Python API (conftest's slab_package) and in float32 as
    a user makes it, from a model.pt with ``forcefield export ... format=pt2
    dtype=float32``; GauntEquiformerV2 the same way in float64 and float32.  Each build
    takes a minute or two, mostly in one Python thread, so the command-line builds run beside
    the in-process one."""
    from forcefield.export import save_model

    folder = tmp_path_factory.mktemp("pt2")
    model_file = save_model(folder / "model.pt", trained)
    eqv2_file = save_model(folder / "eqv2.pt", trained_eqv2)
    paths = {"float32": folder / "tiny_float32.pt2", "eqv2": folder / "eqv2.pt2",
             "eqv2_float32": folder / "eqv2_float32.pt2"}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "forcefield", "export",
                              f"checkpoint={source}", f"output={paths[name]}", "format=pt2",
                              *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for source, name, extra in ((model_file, "float32", ["dtype=float32"]),
                                        (eqv2_file, "eqv2", []),
                                        (eqv2_file, "eqv2_float32", ["dtype=float32"]))]
    float64 = request.getfixturevalue("slab_package")
    for job in jobs:
        _, err = job.communicate(timeout=1200)
        assert job.returncode == 0, err[-2000:]
    return {"float64": float64, "model_file": model_file, "eqv2_file": eqv2_file, **paths}


#: (eager model fixture, float64 package, float32 package) of each architecture
ARCHITECTURES = {"gaunt_mace": ("trained", "float64", "float32"),
                 "gaunt_equiformer_v2": ("trained_eqv2", "eqv2", "eqv2_float32")}


@pytest.fixture(scope="session")
def structures(repo_root, shared_data) -> dict[str, ase.Atoms]:
    molecule = ase.io.read(repo_root / "data" / "3bpa" / "train_300K.xyz", 3)
    slab = ase.io.read(shared_data / "oc20" / "oc20_real_frames.extxyz", 0)
    return {"molecule": molecule, "box972": packed_box(), "slab": slab}


def evaluate(calc: ForceFieldCalculator, atoms: ase.Atoms) -> dict[str, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": np.array(atoms.get_potential_energy()),
           "forces": atoms.get_forces(apply_constraint=False),
           "energies": atoms.get_potential_energies()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def assert_same(got: dict, want: dict, rtol: float) -> None:
    for key, value in want.items():
        scale = max(float(np.abs(value).max()), 1e-3)
        error = float(np.abs(got[key] - value).max())
        assert error <= rtol * scale, f"{key}: {error:.3g} > {rtol:g} x {scale:.3g}"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("name", ["molecule", "box972", "slab"])
def test_package_equals_eager_float64(request, packages, structures, architecture,
                                      name) -> None:
    model_fixture, package, _ = ARCHITECTURES[architecture]
    model = request.getfixturevalue(model_fixture)
    atoms = structures[name]
    want = evaluate(ForceFieldCalculator(model), atoms)
    assert read_pt2_metadata(packages[package])["architecture"] == architecture
    got = evaluate(ForceFieldCalculator(str(packages[package])), atoms)
    assert_same(got, want, 1e-10)
    assert abs(got["energies"].sum() - got["energy"]) < 1e-8


def relative_error(got: dict, want: dict, key: str) -> float:
    scale = max(float(np.abs(want[key]).max()), 1e-3)
    return float(np.abs(got[key] - want[key]).max()) / scale


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("name", ["molecule", "box972", "slab"])
def test_package_equals_eager_float32(request, packages, structures, architecture,
                                      name) -> None:
    """The float32 package is as accurate as the float32 model: within 1e-5 (relative) of
    float64, or within twice the float32 model's own error where that is larger (the
    compiled code sums in another order; GauntEquiformerV2's forces on the slab carry
    ~1e-4 of float32 round-off in eager and packaged form alike)."""
    model_fixture, _, package = ARCHITECTURES[architecture]
    model = request.getfixturevalue(model_fixture)
    atoms = structures[name]
    exact = evaluate(ForceFieldCalculator(copy.deepcopy(model)), atoms)
    eager = evaluate(ForceFieldCalculator(copy.deepcopy(model), dtype="float32"), atoms)
    assert read_pt2_metadata(packages[package])["dtype"] == "float32"
    got = evaluate(ForceFieldCalculator(str(packages[package])), atoms)
    for key in exact:
        bound = max(1e-5, 2 * relative_error(eager, exact, key))
        assert relative_error(got, exact, key) <= bound, (key, bound)
        assert bound < 5e-4, (key, bound)  # float32 itself is that good


def test_compiled_equals_eager_without_recompiling(trained, structures) -> None:
    """compile=True: one compilation for every size (molecule, slab, box), same numbers."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = ForceFieldCalculator(trained, compile=True)
    eager = ForceFieldCalculator(trained)
    for name in ("molecule", "slab", "box972"):
        assert_same(evaluate(compiled, structures[name]), evaluate(eager, structures[name]),
                    1e-10)
    molecule = structures["molecule"].copy()
    for step in range(5):  # an MD-like sequence: new positions, new edge counts
        molecule.positions += 0.02 * np.random.default_rng(step).normal(size=(len(molecule), 3))
        assert_same(evaluate(compiled, molecule), evaluate(eager, molecule), 1e-10)
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_md_compiles_once(trained, structures, tmp_path) -> None:
    """An NVE run with compile=true compiles its graph on the first step and never again
    (md_summary.json counts the compilations), with the eager run's energies."""
    from forcefield.md import run_md

    runs = {}
    for name, calc in (("compiled", ForceFieldCalculator(trained, compile=True)),
                       ("eager", ForceFieldCalculator(trained))):
        runs[name] = run_md(calc, structures["molecule"], steps=60, progress=False,
                            output_dir=tmp_path / name)
    assert runs["compiled"]["compilations"] == 1 and runs["eager"]["compilations"] == 0
    assert runs["compiled"]["final_total_energy_eV"] == pytest.approx(
        runs["eager"]["final_total_energy_eV"], abs=1e-9)


def test_metadata_is_read_without_loading(trained, packages) -> None:
    meta = read_pt2_metadata(packages["float64"])
    assert meta["species"] == list(SLAB_SPECIES)
    assert meta["r_max"] == trained.config["r_max"]
    assert meta["dtype"] == "float64" and meta["needs_ops"] is True
    assert meta["num_interactions"] == trained.config["num_interactions"]
    assert meta["e0s"][6] == trained.config["e0s"][6]
    assert len(meta["weights_sha256"]) == 64
    assert read_pt2_metadata(packages["float32"])["dtype"] == "float32"


def test_package_runs_without_forcefield_model_code(packages, structures, tmp_path) -> None:
    """Only torch and the operator library: importing forcefield fails in the child."""
    atoms = structures["molecule"]
    from forcefield.data import neighbour_list

    i, j, shifts = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    inputs = {"positions": atoms.positions.tolist(), "numbers": atoms.numbers.tolist(),
              "edge_index": [i.tolist(), j.tolist()], "shifts": shifts.tolist()}
    script = f"""
import importlib.abc, json, sys
class NoForcefield(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "forcefield" or name.startswith("forcefield."):
            raise ImportError("forcefield is not available here")
sys.meta_path.insert(0, NoForcefield())
import torch
torch.ops.load_library({str(ops.library_path())!r})
runner = torch._inductor.aoti_load_package({str(packages["float64"])!r})
x = json.load(sys.stdin)
out = runner(torch.tensor(x["positions"], dtype=torch.float64), torch.tensor(x["numbers"]),
             torch.zeros(3, 3, dtype=torch.float64), torch.tensor(x["edge_index"]),
             torch.tensor(x["shifts"], dtype=torch.float64))
try:
    import forcefield  # noqa: F401
    print("forcefield was importable")
except ImportError:
    print(json.dumps({{"energy": out[0].item(), "forces": out[2].tolist()}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(inputs),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    want = evaluate(ForceFieldCalculator(str(packages["float64"])), atoms)
    assert abs(result["energy"] - float(want["energy"])) < 1e-8
    np.testing.assert_allclose(result["forces"], want["forces"], atol=1e-10)


def test_unknown_element_is_one_sentence(packages) -> None:
    atoms = ase.Atoms("CFe", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = ForceFieldCalculator(str(packages["float64"]))
    with pytest.raises(Exception, match=r"Fe \(Z=26\)"):
        atoms.get_potential_energy()


def test_bad_packages_are_one_sentence(packages, tmp_path) -> None:
    good = packages["float64"]
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.pt2"
    text.write_text("not a package\n")
    foreign = rewrite_pt2_metadata(good, tmp_path / "foreign.pt2", ops_version="99")
    plain = tmp_path / "plain.pt2"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("x/data/aotinductor/model/a.wrapper_metadata.json", "{}")
    cases = {truncated: "not a zip archive, or truncated", text: "not a zip archive",
             foreign: "operator set 99", plain: "without forcefield metadata",
             tmp_path / "missing.pt2": "does not exist"}
    for path, cause in cases.items():
        with pytest.raises(ModelFileError, match=cause) as info:
            ForceFieldCalculator(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_cli_md_with_a_package(packages, tmp_path, repo_root) -> None:
    """md runs on the CLI-exported float32 package; a damaged package is exit code 2."""
    meta = read_pt2_metadata(packages["float32"])
    assert meta["dtype"] == "float32"
    assert meta["weights_sha256"] != read_pt2_metadata(packages["float64"])["weights_sha256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    structure = repo_root / "data" / "3bpa" / "train_300K.xyz"

    def md(model: Path, out: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "forcefield", "md", f"model={model}",
                               f"structure={structure}", "steps=20", "progress=false",
                               "dtype=float32", f"output_dir={tmp_path / out}"],
                              capture_output=True, text=True, env=env, timeout=600)

    run = md(packages["float32"], "md")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "md" / "md_summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 20
    assert summary["max_energy_drift_meV_per_atom"] < 1.0
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(packages["float32"].read_bytes()[:1000])
    bad = md(broken, "md2")
    assert bad.returncode == 2
    assert str(broken) in bad.stderr and "Traceback" not in bad.stderr


def _write_input(path: Path, atoms: ase.Atoms, r_max: float) -> None:
    from forcefield.data import neighbour_list

    i, j, shifts = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    lines = [f"{len(atoms)} {len(i)}"]
    lines += [f"{z} " + " ".join(repr(float(v)) for v in position)
              for z, position in zip(atoms.numbers, atoms.positions, strict=True)]
    lines += [" ".join(repr(float(v)) for v in row) for row in atoms.cell.array]
    lines += [f"{a} {b} {s[0]:g} {s[1]:g} {s[2]:g}" for a, b, s in zip(i, j, shifts,
                                                                       strict=True)]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_cpp_loader_equals_python(packages, structures, tmp_path_factory) -> None:
    """A C++ program (libtorch's AOTIModelPackageLoader, no Python) gives each float64
    package's energy, forces and virial on the molecule, the slab and the box."""
    from forcefield.integrations.cpp import build

    folder = tmp_path_factory.mktemp("cpp")
    program = build(folder)
    for architecture, (_, name, _) in ARCHITECTURES.items():
        package = packages[name]
        calc = ForceFieldCalculator(str(package))
        for structure in ("molecule", "slab", "box972"):
            atoms = structures[structure]
            _write_input(folder / f"{structure}.txt", atoms, calc.r_max)
            proc = subprocess.run([str(program), str(package), str(ops.library_path()),
                                   str(folder / f"{structure}.txt")], capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            lines = proc.stdout.strip().splitlines()
            assert lines[0] == f"species {json.dumps(list(SLAB_SPECIES))}"
            energy = float(lines[1].split()[1])
            forces = np.loadtxt(lines[2:2 + len(atoms)])
            virial = np.loadtxt(lines[2 + len(atoms):])
            want = evaluate(calc, atoms)
            where = f"{architecture}, {structure}"
            assert abs(energy - float(want["energy"])) <= 1e-10 * abs(energy), where
            scale = float(np.abs(want["forces"]).max())
            np.testing.assert_allclose(forces, want["forces"], atol=1e-10 * scale, rtol=0,
                                       err_msg=where)
            if atoms.pbc.all():
                stress = -virial / atoms.get_volume()
                voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
                scale = float(np.abs(want["stress"]).max())
                np.testing.assert_allclose(voigt, want["stress"], atol=1e-10 * scale, rtol=0,
                                           err_msg=where)
    broken = folder / "broken.pt2"
    broken.write_bytes(packages["float64"].read_bytes()[:2000])
    proc = subprocess.run([str(program), str(broken), str(ops.library_path()),
                           str(folder / "molecule.txt")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "could not be loaded" in proc.stderr


def test_direct_capped_equiformer_compiles(structures) -> None:
    """A GauntEquiformerV2 with direct forces and a neighbour cap (the OC20 presets' kind)
    compiles once for every size (the calculator hands the traced graph the capped edges)
    and equals eager on the slab, the box and a molecule; a package of it is marked
    direct and refused without ``allow_direct_forces``."""
    from torch._dynamo.utils import counters

    from forcefield.direct_forces import DirectForcesWarning

    model = trained_tiny_model(SLAB_SPECIES, steps=5, architecture="gaunt_equiformer_v2",
                               forces="direct", max_neighbors=8, r_max=5.0)
    torch._dynamo.reset()
    counters.clear()
    with pytest.warns(DirectForcesWarning):
        compiled = ForceFieldCalculator(copy.deepcopy(model), compile=True,
                                        allow_direct_forces=True)
    with pytest.warns(DirectForcesWarning):
        eager = ForceFieldCalculator(model, allow_direct_forces=True)
    assert compiled.max_neighbors == eager.max_neighbors == 8
    for name in ("slab", "box972", "molecule"):
        assert_same(evaluate(compiled, structures[name]), evaluate(eager, structures[name]),
                    1e-10)
    assert counters["stats"]["unique_graphs"] == 1


def test_package_metadata_rules(trained, packages, structures, tmp_path) -> None:
    """A package marked ``forces=direct`` is refused like a direct-force model; one with a
    neighbour cap gets capped edges from the calculator, as an eager model with that cap."""
    from forcefield.direct_forces import DirectForcesError

    direct = rewrite_pt2_metadata(packages["float64"], tmp_path / "direct.pt2", forces="direct")
    with pytest.raises(DirectForcesError, match="allow_direct_forces"):
        ForceFieldCalculator(str(direct))
    capped = rewrite_pt2_metadata(packages["float64"], tmp_path / "capped.pt2",
                                  max_neighbors="6")
    calc = ForceFieldCalculator(str(capped))
    assert calc.max_neighbors == 6
    eager_capped = copy.deepcopy(trained)
    eager_capped.config["max_neighbors"] = 6
    atoms = structures["slab"]
    want = evaluate(ForceFieldCalculator(eager_capped), atoms)
    assert_same(evaluate(calc, atoms), want, 1e-10)
    uncapped = evaluate(ForceFieldCalculator(trained), atoms)
    assert abs(float(uncapped["energy"]) - float(want["energy"])) > 1e-6  # the cap matters
