//! ASTM E1381 / E1394 — see submodules (being built).
