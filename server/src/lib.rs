//! The ModelRelay server: the HTTP API in front of the relay core.
