"""i-PI drives a forcefield model through ASE's socket client (docs/ipi.md).

``i-pi input.xml`` (20 steps of Langevin NVT of a 3BPA molecule, a UNIX socket) and
``python -m forcefield.integrations.ipi`` run as subprocesses with timeouts; the potential
energy i-PI reports for the final step and the forces it writes equal the calculator's on
the final frame of i-PI's trajectory.  Sockets are removed and processes ended whatever
happens, so a stuck run cannot hang the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import units
from helpers import trained_tiny_model

from forcefield import ForceFieldCalculator
from forcefield.export import save_model

pytest.importorskip("ipi", reason="i-PI is not installed (pip install ipi)")

from forcefield.integrations.ipi import IPIConnectionError, run_client, socket_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: the input of docs/ipi.md with 20 steps, every step written, and full precision
INPUT = """<simulation verbosity="low" floatformat="%25.16e">
  <output prefix="md">
    <properties stride="1" filename="out">
      [ step, time{picosecond}, conserved{electronvolt}, temperature{kelvin}, potential ]
    </properties>
    <trajectory filename="pos" stride="1" format="ase"> positions </trajectory>
    <trajectory filename="frc" stride="1" format="ase"> forces </trajectory>
  </output>
  <total_steps>20</total_steps>
  <prng><seed>31415</seed></prng>
  <ffsocket name="forcefield" mode="unix" pbc="false">
    <address>{address}</address>
    <timeout>60</timeout>
  </ffsocket>
  <system>
    <initialize nbeads="1">
      <file mode="ase">init.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="forcefield"/></forces>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond">0.5</timestep>
        <thermostat mode="langevin"><tau units="femtosecond">100</tau></thermostat>
      </dynamics>
    </motion>
  </system>
</simulation>
"""


def _ipi_command() -> list[str]:
    """The i-pi script installed beside this Python, run by it; else i-pi from PATH."""
    beside = Path(sys.executable).parent / "i-pi"
    if beside.exists():
        return [sys.executable, str(beside)]
    found = shutil.which("i-pi")
    if found is None:
        pytest.skip("the i-pi script of the ipi package is not on PATH")
    return [found]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("ipi") / "model.pt", trained_tiny_model())


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def test_nvt_through_the_socket_ends_at_the_calculator_energy(model_file, tmp_path):
    molecule = ase.io.read(ROOT / "data" / "3bpa" / "train_300K.xyz", 5)
    molecule.cell = [30.0, 30.0, 30.0]  # i-PI needs a cell; pbc stays False: a molecule
    molecule.pbc = False
    ase.io.write(tmp_path / "init.xyz", molecule, format="extxyz")
    address = f"fftest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    (tmp_path / "input.xml").write_text(INPUT.replace("{address}", address))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    server = client = None
    try:
        with open(tmp_path / "ipi.log", "w") as log:
            server = subprocess.Popen([*_ipi_command(), "input.xml"], cwd=tmp_path,
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
            client = subprocess.run(
                [sys.executable, "-m", "forcefield.integrations.ipi", "--model",
                 str(model_file), "--structure", "init.xyz", "--address", address,
                 "--wait", "60"], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=180)
            server.wait(timeout=60)
    finally:
        _stop(server)
        socket_path(address).unlink(missing_ok=True)
    log = (tmp_path / "ipi.log").read_text()
    assert client.returncode == 0, client.stderr[-2000:]
    assert server.returncode == 0, log[-2000:]

    properties = np.loadtxt(tmp_path / "md.out", ndmin=2)
    assert properties[-1, 0] == 20 and np.isfinite(properties).all()
    final = ase.io.read(tmp_path / "md.pos_0.extxyz", -1)
    written_forces = ase.io.read(tmp_path / "md.frc_0.extxyz", -1).get_forces()
    assert "Step:          20" in final.info["ipi_comment"]
    atoms = molecule.copy()
    atoms.positions = final.positions  # written to 1e-8 A
    atoms.calc = ForceFieldCalculator(model_file, dtype="float64")
    assert np.abs(atoms.positions - molecule.positions).max() > 1e-3  # it moved
    # i-PI's potential is in Hartree, from ASE's eV / units.Hartree: convert back with ASE's
    assert abs(properties[-1, -1] * units.Hartree - atoms.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(written_forces, atoms.get_forces(), rtol=0, atol=1e-6)


def test_client_without_ipi_is_one_sentence(model_file, repo_data):
    address = f"nobody_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    molecule = repo_data / "3bpa" / "iso_atoms.xyz"
    with pytest.raises(IPIConnectionError) as err:
        run_client(model_file, ase.io.read(molecule, 1), address=address, wait=0.3)
    message = str(err.value)
    assert str(socket_path(address)) in message and "i-pi input.xml" in message
    assert "\n" not in message
