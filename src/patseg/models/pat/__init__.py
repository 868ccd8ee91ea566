"""What PAT adds to SAN: vMF quantizers, HSAttn, TokenMixer, pyramid stages, pixel branch, shared decoder."""
