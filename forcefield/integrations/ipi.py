"""i-PI drives a forcefield model through ASE's socket client (docs/ipi.md).

i-PI (``pip install ipi``) runs the dynamics (path-integral MD, thermostats, replica
exchange ...) and asks a client for energies, forces and the virial of each bead over a
UNIX or TCP socket.  The client here is ASE's ``SocketClient`` with the
:class:`~forcefield.ForceFieldCalculator` attached: start i-PI on an input whose
``<ffsocket>`` names the socket, then start the client on the same address::

    i-pi input.xml &
    python -m forcefield.integrations.ipi --model model.pt --structure init.xyz \\
        --address forcefield

i-PI sends only positions and the cell, so the client takes the elements, the atom order
and the periodicity from ``structure``: give it the file i-PI starts from.  Units are
converted by ASE's protocol (i-PI's atomic units to A and eV).  A structure without
periodic axes is evaluated as a molecule (no stress, whatever cell i-PI holds); a periodic
one also returns the virial, so i-PI's barostats work.  ``forcefield md`` is unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ase.io
from ase import Atoms

from forcefield.errors import ForceFieldError

__all__ = ["IPIConnectionError", "main", "run_client", "socket_path"]


class IPIConnectionError(ForceFieldError):
    """i-PI does not listen on the socket the client was given."""


def socket_path(address: str) -> Path:
    """The file of i-PI's UNIX socket ``address`` (i-PI and ASE both use ``/tmp/ipi_``)."""
    return Path(f"/tmp/ipi_{address}")


def _connect(address: str | None, port: int | None, host: str, wait: float):
    """ASE's ``SocketClient``, retried until i-PI listens (up to ``wait`` seconds)."""
    from ase.calculators.socketio import SocketClient

    deadline = time.monotonic() + wait
    while True:
        try:
            if address is not None:
                return SocketClient(unixsocket=address)
            return SocketClient(host=host, port=port)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                where = (f"the UNIX socket {socket_path(address)}" if address is not None
                         else f"{host}:{port}")
                raise IPIConnectionError(f"i-PI is not listening on {where} after {wait:g} s; "
                                      "start 'i-pi input.xml' first, with the same "
                                      "<ffsocket> address") from None
            time.sleep(0.1)


def run_client(model_path: str | os.PathLike, structure: str | os.PathLike | Atoms,
               address: str | None = "forcefield", port: int | None = None,
               host: str = "localhost", device: str = "cpu", dtype: str | None = "float64",
               wait: float = 60.0, **calculator_kwargs) -> None:
    """Serve i-PI's force requests with a forcefield model until i-PI says EXIT.

    Args:
        model_path: a ``model.pt`` or ``.pt2`` package (anything
            :class:`~forcefield.ForceFieldCalculator` takes).
        structure: the structure i-PI starts from (a file ASE reads, or ``Atoms``): its
            elements, atom order and ``pbc`` are the ones i-PI's positions refer to.
        address: the UNIX socket name of i-PI's ``<ffsocket mode="unix"><address>``; None
            for a TCP socket (``mode="inet"``) on ``host``:``port``.
        port, host: the TCP socket, when ``address`` is None.
        device, dtype: as for the calculator (float64: MD conserves energy).
        wait: seconds to keep trying to connect while i-PI starts.
        calculator_kwargs: more :class:`~forcefield.ForceFieldCalculator` arguments.
    """
    from forcefield.calculator import ForceFieldCalculator

    if address is None and port is None:
        raise ForceFieldError("give the UNIX socket name (address=...) or the TCP port (port=...) "
                         "of i-PI's <ffsocket>")
    atoms = structure.copy() if isinstance(structure, Atoms) else ase.io.read(structure)
    atoms.calc = ForceFieldCalculator(model_path, device=device, dtype=dtype,
                                      **calculator_kwargs)
    client = _connect(address, port, host, wait)
    client.run(atoms, use_stress=bool(atoms.pbc.any()))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m forcefield.integrations.ipi --model M --structure S --address A``."""
    parser = argparse.ArgumentParser(
        prog="python -m forcefield.integrations.ipi",
        description="Serve i-PI's force requests with a forcefield model (ASE SocketClient).")
    parser.add_argument("--model", required=True, help="model.pt or .pt2 package")
    parser.add_argument("--structure", required=True,
                        help="the structure i-PI starts from (elements, order, pbc)")
    parser.add_argument("--address", default=None,
                        help="UNIX socket name (i-PI <ffsocket mode='unix'><address>)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (mode='inet')")
    parser.add_argument("--host", default="localhost", help="TCP host (default localhost)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64", help="float64 (default) or float32")
    parser.add_argument("--wait", type=float, default=60.0,
                        help="seconds to wait for i-PI to listen (default 60)")
    args = parser.parse_args(argv)
    address = args.address if args.address is not None or args.port is not None else "forcefield"
    try:
        run_client(args.model, args.structure, address=address, port=args.port,
                   host=args.host, device=args.device, dtype=args.dtype, wait=args.wait)
    except ForceFieldError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
