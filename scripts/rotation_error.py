"""How much a trained model's predictions move when the structure is rotated.

    python scripts/rotation_error.py RUN/model.pt STRUCTURE.xyz [--rotations 6]
        [--set grid_degree=40 ...] [--json out.json]

Evaluates the structure and ``--rotations`` random rotations of it (seeded) through
:class:`forcefield.ForceFieldCalculator` in float64 and prints the largest change of the
energy (meV) and of the forces rotated back (meV/A) against the unrotated structure.
``--set KEY=VALUE`` rebuilds the model with a changed config key before loading its weights
(only keys that add no weights make sense: ``grid_degree``, ``grid_degree_ffn``), to find
which grid the rotation error comes from.  Periodic structures rotate with their cell.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import yaml
from ase import Atoms
from ase.io import read
from scipy.spatial.transform import Rotation


def rotated(atoms: Atoms, q: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.positions = atoms.positions @ q.T
    if atoms.pbc.any():
        out.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    return out


def rotation_errors(model: torch.nn.Module, atoms: Atoms, rotations: int = 6,
                    seed: int = 0) -> dict[str, float]:
    """Largest |E(Q x) - E(x)| (meV) and |Q^T F(Q x) - F(x)| (meV/A) over the rotations."""
    from forcefield.calculator import ForceFieldCalculator

    calc = ForceFieldCalculator(model, dtype="float64", allow_direct_forces=True)

    def evaluate(a: Atoms) -> tuple[float, np.ndarray]:
        a = a.copy()
        a.calc = calc
        return a.get_potential_energy(), a.get_forces()

    e0, f0 = evaluate(atoms)
    de, df = 0.0, 0.0
    for q in Rotation.random(rotations, random_state=seed).as_matrix():
        e, f = evaluate(rotated(atoms, q))
        de = max(de, abs(e - e0))
        df = max(df, float(np.abs(f @ q - f0).max()))
    return {"energy_meV": 1e3 * de, "forces_meV_A": 1e3 * df, "energy": e0,
            "natoms": len(atoms)}


def load(path: str, changes: dict) -> torch.nn.Module:
    from forcefield.model_files import load_network
    from forcefield.models import build_model

    net, _ = load_network(path, dtype="float64")
    if not changes:
        return net
    rebuilt = build_model({**net.config, **changes}).double().eval()
    rebuilt.load_state_dict(net.state_dict())
    return rebuilt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("structure")
    parser.add_argument("--index", default="0", help="ASE index of the frame")
    parser.add_argument("--rotations", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key] = yaml.safe_load(value)
    atoms = read(args.structure, index=args.index)
    result = {"model": args.model, "structure": args.structure, "changes": changes,
              **rotation_errors(load(args.model, changes), atoms, args.rotations, args.seed)}
    print(f"{args.model} {changes or ''}: max |dE| {result['energy_meV']:.4f} meV, "
          f"max |dF| {result['forces_meV_A']:.4f} meV/A over {args.rotations} rotations "
          f"({result['natoms']} atoms)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
