"""``fastmlp train`` under ``mpiexec -n R``: every rank reads the whole file and prepares it the
same way (the split, the classes and the standardisation are those of one process), then
trains on its share of the training and validation rows (rows r, r + R, r + 2R, … of rank r)
with ``MLP.fit(comm=MPI.COMM_WORLD)``; ``--batch-size`` is per rank. Rank 0 alone prints and
writes the model; the other ranks are quiet."""

from __future__ import annotations

import os

# What an MPI launcher sets in each process it starts (MPICH/Hydra, Open MPI, Slurm's PMI).
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def rank_share(args, X_train, y_train, validation):
    """(comm or None, this rank's X_train, y_train, validation). comm is None outside
    mpiexec or with one rank: the data is returned as is."""
    if not any(name in os.environ for name in _LAUNCHER_VARIABLES):
        return None, X_train, y_train, validation
    from fastmlp._tabular import DataError
    try:
        from mpi4py import MPI
    except ImportError:
        raise DataError("fastmlp train runs under an MPI launcher but mpi4py is not "
                        "installed (pip install 'fastmlp[mpi]'); every rank would train "
                        "alone and write the same file") from None
    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    if ranks == 1:
        return None, X_train, y_train, validation
    if len(y_train) < ranks:
        raise DataError(f"{len(y_train)} training rows cannot be shared by {ranks} ranks")
    if rank != 0:
        args.quiet = True
    if validation is not None:
        X_val, y_val = validation
        # Every rank needs validation rows, or none does (the same on every rank: each read
        # the same file); the scores are reduced over the ranks, weighted by their rows.
        validation = ((X_val[rank::ranks], y_val[rank::ranks]) if len(y_val) >= ranks
                      else None)
    return comm, X_train[rank::ranks], y_train[rank::ranks], validation
