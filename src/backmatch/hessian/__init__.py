"""Local Hessians of blocks: operators, spectra and condition numbers."""
