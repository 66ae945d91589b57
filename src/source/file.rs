//! Reading input files, plain or gzip.
