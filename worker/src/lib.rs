//! The ModelRelay worker: connects out to the relay and calls a local backend.
