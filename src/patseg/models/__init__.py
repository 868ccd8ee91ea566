"""Model parts, without I/O: CLIP towers (``clip``), the SAN baseline (``san``), what PAT adds (``pat``) and the
generic layers they share (``layers``). Modules take plain keyword arguments; ``patseg.build`` reads the configs."""
