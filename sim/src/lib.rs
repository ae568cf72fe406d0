//! Deterministic network-fault simulation of the ModelRelay server and worker.
