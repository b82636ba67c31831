"""The MPI engine: one rank per mapper, rounds reduced with collectives; and the launcher that starts the ranks."""
