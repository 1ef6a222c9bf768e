"""Tools for development and rehearsal, apart from the library: a local multi-node cluster, the
autoscaling rehearsal, the tiny LLaMA the tests and demo train, and the brute-force dedup oracle.
They import the core, never a stage."""
