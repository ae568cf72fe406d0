//! Links that carry ModelRelay protocol frames between the server and its workers.
