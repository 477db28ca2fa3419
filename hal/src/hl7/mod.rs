//! HL7 v2 over MLLP — see submodules (being built).
