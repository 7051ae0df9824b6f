"""The store: the SQLite file that is the source of truth for runs, samples, spectra and jobs."""
