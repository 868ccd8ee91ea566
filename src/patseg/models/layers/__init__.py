"""Generic layers PAT borrows: DySample, SPADE, a pre-norm Transformer, resampling convolutions, LayerNorm2d, MLP."""
